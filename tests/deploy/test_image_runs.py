"""The image, really built and run: `docker/build-image.sh` (what `make image` runs) builds it with
podman, then wallet, payout and gifting start from it as the image's non-root user, with a read-only
root and nothing writable but what the manifests mount (their emptyDir volumes), migrate as the
migration Jobs do, serve `make demo`'s story over gRPC, and stop on SIGTERM with status 0 within
the documented bound.

Where podman can run containers, they are containers (`podman run --read-only`). Where it cannot
(crun without cgroups, as on this project's machines), each service runs from the image's own
filesystem (`podman image mount`): in a mount namespace of its own, the image read-only, a host
directory over each emptyDir's path, then `chroot --userspec=<the image's user>` and the image's
environment, working directory and command. Without podman (and no way to install it) the test
is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from services.giftctl.demo import SUITE_ENV
from services.giftctl.session import SERVICES
from services.giftctl.suite import START_ORDER, free_port
from tests.deploy import kube
from tests.support import databases
from tests.support.metrics import scrape
from tests.support.processes import STOP_ALLOWANCE_SECONDS, wait_serving
from tests.support.story import walk_story

BUILD_TIMEOUT_SECONDS = 1200  # a first build makes the Debian base too
TOOLS_MISSING = 3  # docker/build-image.sh: podman cannot be had here
DRAIN_SECONDS = 5


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Image:
    name: str
    user: str  # uid:gid
    env: dict[str, str]
    workdir: str
    containers_run: bool  # `podman run` works here


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    name = f"localhost/giftcoin:test-{secrets.token_hex(4)}"  # its own tag: other checkouts build too
    built = subprocess.run(
        ["bash", "docker/build-image.sh", name],
        cwd=kube.ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    if built.returncode == TOOLS_MISSING:
        pytest.skip(f"the image is NOT built or run here: {built.stderr.strip()}")
    assert built.returncode == 0, f"the image does not build:\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}"
    config = json.loads(_podman("image", "inspect", name, "--format", "{{json .Config}}").stdout)
    containers_run = _podman("run", "--rm", "--network", "host", name, "true").returncode == 0
    try:
        yield Image(
            name,
            config["User"],
            dict(line.split("=", 1) for line in config["Env"]),
            config["WorkingDir"],
            containers_run,
        )
    finally:
        _podman("image", "unmount", name)
        _podman("rmi", name)


def writable_paths(service: str) -> list[str]:
    """What the service's Deployment mounts writable: its emptyDir volumes' mount paths."""
    deployment = yaml.safe_load((kube.DEPLOY / "base" / service / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    (container,) = pod["containers"]
    paths = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    return paths


class ImageService:
    """One service run from the image, with a host directory over each of its writable paths."""

    def __init__(self, image: Image, service: str, workdir: Path, env: dict[str, str]) -> None:
        self.image, self.service, self.env = image, service, env
        self.mounts = {path: workdir / f"{service}{path.replace('/', '-')}" for path in writable_paths(service)}
        uid, gid = (int(n) for n in image.user.split(":"))
        for directory in self.mounts.values():
            directory.mkdir()
            os.chown(directory, uid, gid)  # as the pod's fsGroup makes an emptyDir the user's
        self.root = workdir / f"{service}-root"
        self.root.mkdir()
        self.log = workdir / f"{service}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def host_path(self, path: str) -> Path:
        """Where a file the service writes under one of its writable paths is, on the host."""
        for mount, directory in self.mounts.items():
            if path.startswith(mount + "/"):
                return directory / path[len(mount) + 1 :]
        raise AssertionError(f"{path} is not writable in the {self.service} container")

    def command(self, *arguments: str) -> list[str]:
        environment = {**self.image.env, **self.env}
        argv = ["python", "-m", f"services.{self.service}", *arguments]
        if self.image.containers_run:
            volumes = [f"--volume={directory}:{path}" for path, directory in self.mounts.items()]
            env = [f"--env={k}={v}" for k, v in self.env.items()]
            return ["podman", "run", "--rm", "--network=host", "--read-only", "--read-only-tmpfs=false",
                    *volumes, *env, self.image.name, *argv]  # fmt: skip
        mounted = _podman("image", "mount", self.image.name).stdout.strip()
        assert mounted, "podman image mount gave no path"
        root = shlex.quote(str(self.root))
        setup = [
            f"mount --bind {shlex.quote(mounted)} {root}",
            f"mount -o remount,bind,ro {root}",
            *(f"mount --bind {shlex.quote(str(d))} {root}{shlex.quote(p)}" for p, d in self.mounts.items()),
            f"mount --rbind /dev {root}/dev",
            f"mount -t proc proc {root}/proc",
        ]
        run = [
            "chroot", f"--userspec={self.image.user}", str(self.root),
            "/usr/bin/env", "-i", f"--chdir={self.image.workdir}",
            *(f"{k}={v}" for k, v in environment.items()), *argv,
        ]  # fmt: skip
        # unshare, sh, chroot and env each exec the next: the process signalled is the service.
        script = " && ".join(setup) + " && exec " + shlex.join(run)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    def migrate(self) -> None:
        """As the migration Job does: `python -m services.<svc> migrate`, then exit 0."""
        with self.log.open("ab") as log:
            done = subprocess.run(self.command("migrate"), stdout=log, stderr=subprocess.STDOUT, timeout=120)
        assert done.returncode == 0, self.log.read_text()[-3000:]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command("serve"), stdout=log, stderr=subprocess.STDOUT)

    def uid(self) -> str:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("Uid:")]
        return line.split()[1]

    def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM, as the kubelet sends it: (exit status, seconds to exit)."""
        assert self.proc is not None
        signalled = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout), time.monotonic() - signalled

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_the_image_serves_the_story_as_its_non_root_user_on_a_read_only_root_and_stops_cleanly(
    image: Image, backend: str, tmp_path: Path
) -> None:
    targets = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    metrics = {name: free_port() for name in SERVICES}
    services: dict[str, ImageService] = {}
    for name in START_ORDER:
        host, port = targets[name].rsplit(":", 1)
        upper = name.upper()
        env = {
            "GIFTCOIN_DEV_MODE": "true",
            f"GIFTCOIN_{upper}_HOST": host,
            f"GIFTCOIN_{upper}_PORT": port,
            "GIFTCOIN_MIGRATE_ON_START": "false",  # as deployed: the migration Job migrates
            "GIFTCOIN_SHUTDOWN_GRACE_SECONDS": str(DRAIN_SECONDS),
            "GIFTCOIN_TRACE_EXPORTER": "file",
            "GIFTCOIN_TRACE_FILE": f"/tmp/traces-{name}.jsonl",
            "GIFTCOIN_METRICS_PORT": str(metrics[name]),
            "GIFTCOIN_GIFTING_WALLET_TARGET": targets["wallet"],
            "GIFTCOIN_GIFTING_PAYOUT_TARGET": targets["payout"],
            **SUITE_ENV,
        }
        env[f"GIFTCOIN_{upper}_DATABASE_URL"] = (
            f"sqlite:////tmp/{name}.db" if backend == "sqlite" else databases.empty_database(backend, tmp_path)
        )
        services[name] = ImageService(image, name, tmp_path, env)
    # The story reads the gift's trace from the span files each service writes in its /tmp.
    story_dir = tmp_path / "story"
    story_dir.mkdir()
    for name, service in services.items():
        (story_dir / f"traces-{name}.jsonl").symlink_to(service.host_path(f"/tmp/traces-{name}.jsonl"))
    try:
        for name in START_ORDER:
            services[name].migrate()
            services[name].start()
            wait_serving(targets[name], 60, services[name].proc)
        if not image.containers_run:
            assert {services[name].uid() for name in SERVICES} == {image.user.split(":")[0]}, "the image's user"
        walk_story(targets, story_dir)
        # The story's two gifts, on the endpoint Prometheus would scrape.
        completed = scrape(metrics["gifting"]).value(
            "giftcoin_gifting_saga_outcomes_total", giftcoin_gift_state="completed"
        )
        assert completed == 2
        bound = DRAIN_SECONDS + STOP_ALLOWANCE_SECONDS + 2  # + GIFTCOIN_TELEMETRY_TIMEOUT_MS's default
        for name in reversed(START_ORDER):
            status, took = services[name].stop(timeout=bound + 30)
            assert status == 0, f"{name} exited with {status}: {services[name].log.read_text()[-3000:]}"
            assert took <= bound, f"{name} took {took:.1f}s to stop, over the documented {bound}s"
    finally:
        for service in services.values():
            service.kill()
