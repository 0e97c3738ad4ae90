"""Every overlay rendered once per session with `kubectl kustomize` (skipped, saying why, without kubectl)."""

from __future__ import annotations

import pytest

from tests.deploy import kube


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[kube.Obj]]:
    if kube.kubectl() is None:
        pytest.skip("kubectl is not installed: the kustomize overlays cannot be rendered (install kubectl >= 1.27)")
    return {overlay: kube.render(kube.DEPLOY / "overlays" / overlay) for overlay in kube.OVERLAYS}


@pytest.fixture(scope="session")
def rendered_base(rendered: dict[str, list[kube.Obj]]) -> list[kube.Obj]:
    """The base alone: not deployable (no database, no Secrets), but its objects must be valid too."""
    return kube.render(kube.DEPLOY / "base")


@pytest.fixture(params=kube.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(rendered: dict[str, list[kube.Obj]], overlay: str) -> list[kube.Obj]:
    return rendered[overlay]
