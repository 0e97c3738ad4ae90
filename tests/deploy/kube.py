"""Rendering the kustomize overlays and reading the objects they produce (no cluster needed)."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("dev", "prod")
NAMESPACE = "giftcoin"

# The giftcoin services, their gRPC ports and their gRPC service names (protos/giftcoin/<svc>/v1).
SERVICES = {
    "wallet": (50051, "giftcoin.wallet.v1.WalletService"),
    "gifting": (50052, "giftcoin.gifting.v1.GiftingService"),
    "payout": (50053, "giftcoin.payout.v1.PayoutService"),
}

Obj = dict[str, Any]
POD_OWNERS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
# The reconciliation job: it runs the giftcoin image, but is not one of the services.
RECONCILER = "reconciler"


def kubectl() -> str | None:
    return shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)


def render(path: Path) -> list[Obj]:
    """`kubectl kustomize <path>`: the objects an apply would send, in order."""
    binary = kubectl()
    assert binary, "kubectl is not installed"
    result = subprocess.run([binary, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def key(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def find(objects: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


@dataclass(frozen=True)
class Workload:
    """Something that runs pods: its kind, name, namespace and pod template."""

    kind: str
    name: str
    namespace: str
    obj: Obj

    @property
    def template(self) -> Obj:
        spec = self.obj["spec"]["jobTemplate"]["spec"] if self.kind == "CronJob" else self.obj["spec"]
        return dict(spec["template"])

    @property
    def pod_spec(self) -> Obj:
        return dict(self.template["spec"])

    @property
    def labels(self) -> Mapping[str, str]:
        return dict(self.template["metadata"].get("labels", {}))

    @property
    def service(self) -> str | None:
        """The giftcoin service whose code this runs (server or migration), else None."""
        name = self.labels.get("app.kubernetes.io/name", "")
        component = self.labels.get("app.kubernetes.io/component")
        return name if name in SERVICES and component in ("server", "migration") else None

    @property
    def ours(self) -> bool:
        """Whether it runs the giftcoin image: a service (server or migration), or the reconciliation job."""
        return self.service is not None or self.labels.get("app.kubernetes.io/name") == RECONCILER

    def containers(self) -> Iterator[Obj]:
        yield from self.pod_spec.get("initContainers", [])
        yield from self.pod_spec["containers"]


def workloads(objects: list[Obj]) -> list[Workload]:
    return [
        Workload(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", "default"), o)
        for o in objects
        if o["kind"] in POD_OWNERS
    ]


def secret_placeholder(name: str, key_name: str) -> str:
    return f"<secret {name}/{key_name}, created outside the repository>"


def container_env(container: Obj, objects: list[Obj]) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps, then env (which wins), resolved
    against the rendered ConfigMaps and Secrets; a Secret the overlay leaves to the operator
    yields a placeholder value."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef") or source.get("secretRef")
        assert ref, f"unknown envFrom source {source}"
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        found = find(objects, kind, ref["name"])
        assert found is not None or ref.get("optional"), f"envFrom names a missing {kind} {ref['name']}"
        env.update(_data(found) if found else {})
    for var in container.get("env", []):
        env[var["name"]] = _value(var, objects)
    return env


def _value(var: Obj, objects: list[Obj]) -> str:
    if "value" in var:
        return str(var["value"])
    source = var["valueFrom"]
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        config_map = find(objects, "ConfigMap", ref["name"])
        assert config_map is not None, f"{var['name']} names a missing ConfigMap {ref['name']}"
        return str(config_map["data"][ref["key"]])
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        secret = find(objects, "Secret", ref["name"])
        return _data(secret)[ref["key"]] if secret else secret_placeholder(ref["name"], ref["key"])
    return f"<{next(iter(source))}>"  # fieldRef / resourceFieldRef: known only to the kubelet


def _data(obj: Obj) -> dict[str, str]:
    values = {k: str(v) for k, v in obj.get("data", {}).items()}
    if obj["kind"] == "Secret":
        values = {k: base64.b64decode(v).decode() for k, v in values.items()}
        values.update(obj.get("stringData", {}))
    return values
