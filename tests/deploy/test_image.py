"""The image, checked without Docker: pinned base and dependencies, non-root, the entry points the
manifests run exist, and the build context holds what the build copies."""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy import kube

DOCKERFILE = kube.ROOT / "Dockerfile"
DOCKERIGNORE = kube.ROOT / ".dockerignore"
RUNTIME_REQUIREMENTS = kube.ROOT / "docker" / "requirements-runtime.txt"
PROTOC_REQUIREMENTS = kube.ROOT / "docker" / "requirements-protoc.txt"
PINNED_BASE = re.compile(r"^[a-z0-9./-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}$")
BUILD_ONLY = {"grpcio-tools"}  # runs protoc in the build stage; nothing imports it at run time


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [argument for name, argument in self.instructions if name == instruction]


def _parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) from the Dockerfile: enough of its grammar for these checks."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, argument = line.partition(" ")
        instruction, argument = instruction.upper(), argument.strip()
        if instruction == "FROM":
            parts = argument.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: arguments.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base, parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""))
        elif stages:
            stages[-1].instructions.append((instruction, argument))
        elif instruction == "ARG" and "=" in argument:
            name, _, default = argument.partition("=")
            arguments[name] = default
    return arguments, stages


def _requirements(path: Path) -> dict[str, Requirement]:
    lines = path.read_text().splitlines()
    return {
        _canonical(r.name): r
        for r in (Requirement(line) for line in lines if line.strip() and not line.startswith("#"))
    }


def _runtime_part_of_requirements_txt() -> dict[str, Requirement]:
    """requirements.txt above its `# development` line."""
    lines = []
    for line in (kube.ROOT / "requirements.txt").read_text().splitlines():
        if line.strip().lower().startswith("# development"):
            break
        if line.strip() and not line.startswith("#"):
            lines.append(Requirement(line))
    return {_canonical(r.name): r for r in lines}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dependencies_closure(roots: list[Requirement]) -> set[str]:
    """Every distribution `roots` need, as installed in this environment (from requirements.txt)."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        requirement = pending.pop()
        name = _canonical(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        extras = requirement.extras or {""}
        for raw in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(raw)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dependency)
    return seen


def test_every_base_image_is_pinned_by_digest() -> None:
    _, stages = _parse_dockerfile()
    names = {stage.name for stage in stages}
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        if stage.base not in names:
            assert PINNED_BASE.match(stage.base), f"FROM {stage.base} is not pinned by digest"
    assert stages[-1].base.startswith("python:3.11-slim@"), "the runtime runs the Python the project targets"


def test_the_image_runs_as_the_non_root_user_the_manifests_name(rendered: dict[str, list[kube.Obj]]) -> None:
    _, stages = _parse_dockerfile()
    (user,) = stages[-1].values("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric user, so that runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) > 0
    for objects in rendered.values():
        for workload in kube.workloads(objects):
            if workload.ours:
                assert workload.pod_spec["securityContext"]["runAsUser"] == int(uid), workload.name
                assert workload.pod_spec["securityContext"]["runAsGroup"] == int(gid), workload.name


def test_the_runtime_environment_suits_a_read_only_container() -> None:
    _, stages = _parse_dockerfile()
    environment = " ".join(stages[-1].values("ENV"))
    assert "PYTHONUNBUFFERED=1" in environment, "logs reach the kubelet at once"
    assert "PYTHONDONTWRITEBYTECODE=1" in environment, "the root filesystem is read-only"
    (pythonpath,) = re.findall(r"PYTHONPATH=(\S+)", environment)
    workdir = stages[-1].values("WORKDIR")[-1]
    assert pythonpath.split(":") == [workdir, f"{workdir}/gen"], "the repository root and the generated contracts"
    # Byte code is compiled in the build, as the running container cannot write it.
    assert any("compileall" in run for run in stages[0].values("RUN"))


def test_the_contracts_are_generated_in_the_build_and_copied_into_the_image() -> None:
    _, stages = _parse_dockerfile()
    build, runtime = stages[0], stages[-1]
    assert any("grpc_tools.protoc" in run and "--grpc_python_out=gen" in run for run in build.values("RUN"))
    copies = runtime.values("COPY")
    assert f"--from={build.name} /build/gen /app/gen" in copies
    assert f"--from={build.name} /build/services /app/services" in copies


def test_the_entry_points_the_image_and_the_manifests_run_exist(rendered: dict[str, list[kube.Obj]]) -> None:
    _, stages = _parse_dockerfile()
    (default,) = stages[-1].values("CMD")
    commands = [json.loads(default)]  # the exec form: a JSON list
    for objects in rendered.values():
        for workload in kube.workloads(objects):
            if workload.ours:
                commands += [c["command"] + c.get("args", []) for c in workload.containers()]
    for command in commands:
        assert command[:2] == ["python", "-m"], command
        module, *arguments = command[2:]
        package = kube.ROOT / module.replace(".", "/")
        assert (package / "__main__.py").is_file(), f"{module} has no __main__.py"
        assert arguments in ([], ["serve"], ["migrate"]), command
    served = {c[2] for c in commands}
    assert served == {f"services.{svc}" for svc in kube.SERVICES} | {"services.reconciler"}


def test_the_image_installs_exactly_pinned_dependencies_in_step_with_requirements_txt() -> None:
    runtime = _requirements(RUNTIME_REQUIREMENTS)
    protoc = _requirements(PROTOC_REQUIREMENTS)
    project = _runtime_part_of_requirements_txt()
    for requirement in [*runtime.values(), *protoc.values()]:
        assert str(requirement.specifier).startswith("==") and len(requirement.specifier) == 1, str(requirement)
    for name, requirement in project.items():
        image = protoc if name in BUILD_ONLY else runtime
        assert name in image, f"{requirement} (requirements.txt) is missing from the image's requirements"
        assert image[name].specifier == requirement.specifier, f"{image[name]} differs from {requirement}"
    for name in protoc.keys() & runtime.keys():
        assert protoc[name].specifier == runtime[name].specifier, name
    # The image installs with --no-deps, so every package the runtime needs must be listed.
    needed = _dependencies_closure([r for n, r in project.items() if n not in BUILD_ONLY])
    assert not needed - runtime.keys(), (
        f"pin these in docker/requirements-runtime.txt: {sorted(needed - runtime.keys())}"
    )
    assert not runtime.keys() & BUILD_ONLY


def test_the_build_context_holds_only_what_the_build_copies() -> None:
    _, stages = _parse_dockerfile()
    rules = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "exclude everything, then admit what the build needs"
    admitted = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    sources = []
    for stage in stages:
        for copy in stage.values("COPY"):
            if not copy.startswith("--from="):
                sources += [s.rstrip("/") for s in copy.split()[:-1]]
    assert sorted(set(sources)) == sorted(admitted)
    for source in sources:
        assert (kube.ROOT / source).exists(), source
