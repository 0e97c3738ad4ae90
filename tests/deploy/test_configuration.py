"""The environment the manifests give each service is the one the service reads.

What a service reads comes from its own settings module (`services.<svc>.settings.load_settings`,
through `runtime.config.Env`, which records every name asked for), so a setting renamed in the
code and not in deploy/ (or misspelt in deploy/) fails here. Then each container's environment,
as rendered, must load: the values parse, and they agree with the ports, probes and mounts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import opentelemetry.environment_variables as otel_api_names
import opentelemetry.sdk.environment_variables as otel_sdk_names

from services.runtime.config import Env, ServiceSettings
from tests.deploy import kube

# Read by the shared entry point (services/runtime/main.py) after the settings, with the same Env.
ENTRY_POINT_NAMES = {"GIFTCOIN_MIGRATE_ON_START"}
# Read by the OpenTelemetry SDK and its OTLP exporter themselves.
OTEL_NAMES = {
    value
    for module in (otel_api_names, otel_sdk_names)
    for value in vars(module).values()
    if isinstance(value, str) and value.startswith("OTEL_")
}
DEV_ENVIRONMENT = {"GIFTCOIN_DEV_MODE": "true"}


def _load_settings(service: str) -> Callable[[Env], Any]:
    module = importlib.import_module(f"services.{service}.settings")
    return module.load_settings


def names_read_by(service: str) -> set[str]:
    env = Env(DEV_ENVIRONMENT)
    _load_settings(service)(env)
    return env.names | ENTRY_POINT_NAMES


def _service_containers(objects: list[kube.Obj]) -> list[tuple[kube.Workload, kube.Obj]]:
    return [(w, c) for w in kube.workloads(objects) if w.service for c in w.containers()]


def _load(service: str, environment: dict[str, str]) -> ServiceSettings:
    settings = _load_settings(service)(Env(environment))
    assert isinstance(settings, ServiceSettings)
    return settings


def test_the_service_settings_modules_record_what_they_read() -> None:
    for service in kube.SERVICES:
        names = names_read_by(service)
        upper = service.upper()
        assert {f"GIFTCOIN_{upper}_PORT", f"GIFTCOIN_{upper}_DATABASE_URL", "GIFTCOIN_JWT_KEYS"} <= names
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in OTEL_NAMES and "OTEL_SERVICE_NAME" in OTEL_NAMES


def test_the_manifests_set_only_variables_the_services_read(objects: list[kube.Obj]) -> None:
    problems = []
    for workload, container in _service_containers(objects):
        assert workload.service is not None
        unread = set(kube.container_env(container, objects)) - names_read_by(workload.service) - OTEL_NAMES
        if unread:
            problems.append(
                f"{workload.name}/{container['name']} sets {sorted(unread)}, which {workload.service} never reads"
            )
    assert not problems, "\n".join(problems)


def test_the_manifests_set_what_a_deployment_needs(objects: list[kube.Obj], overlay: str) -> None:
    for workload, container in _service_containers(objects):
        assert workload.service is not None
        upper = workload.service.upper()
        environment = kube.container_env(container, objects)
        needed = {
            f"GIFTCOIN_{upper}_DATABASE_URL",
            f"GIFTCOIN_{upper}_HOST",
            f"GIFTCOIN_{upper}_PORT",
            "GIFTCOIN_HEALTH_PORT",
            "GIFTCOIN_MIGRATE_ON_START",
            "GIFTCOIN_SHUTDOWN_GRACE_SECONDS",
            "GIFTCOIN_TRACE_EXPORTER",
            "GIFTCOIN_TELEMETRY_TIMEOUT_MS",
            "GIFTCOIN_METRICS_PORT",
            "OTEL_SERVICE_NAME",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        }
        if workload.service == "gifting":
            needed |= {"GIFTCOIN_GIFTING_WALLET_TARGET", "GIFTCOIN_GIFTING_PAYOUT_TARGET"}
        if overlay == "prod":
            needed |= {"GIFTCOIN_TLS_CERT_FILE", "GIFTCOIN_TLS_KEY_FILE", "GIFTCOIN_TLS_CA_FILE", "GIFTCOIN_JWT_KEYS"}
            if workload.service == "gifting":
                needed.add("GIFTCOIN_JWT_SIGNING_KEY_FILE")
        assert needed <= set(environment), f"{workload.name}: missing {sorted(needed - set(environment))}"
        # Only the migration Job migrates.
        assert environment["GIFTCOIN_MIGRATE_ON_START"] == "false"
        assert environment["OTEL_SERVICE_NAME"] == f"giftcoin-{workload.service}"
        # Credentials come from Secrets, never from a literal in a manifest or ConfigMap.
        (var,) = [v for v in container.get("env", []) if v["name"] == f"GIFTCOIN_{upper}_DATABASE_URL"]
        assert "secretKeyRef" in var.get("valueFrom", {}), f"{workload.name}: its database URL is not from a Secret"


def test_each_container_s_environment_loads_and_agrees_with_its_pod(objects: list[kube.Obj], overlay: str) -> None:
    for workload, container in _service_containers(objects):
        assert workload.service is not None
        settings = _load(workload.service, kube.container_env(container, objects))
        grpc_port, _ = kube.SERVICES[workload.service]
        assert settings.dev_mode is (overlay == "dev")
        assert settings.host == "0.0.0.0", "the pod's IP must be bound, not loopback"
        assert settings.port == grpc_port
        assert settings.trace_exporter == ("console" if overlay == "dev" else "otlp")
        identity = settings.identity
        if workload.kind == "Deployment":
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert settings.port == ports["grpc"] and settings.health_port == ports["health"]
        assert settings.tls.enabled is (overlay == "prod")
        if settings.tls.enabled:
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in workload.pod_spec["volumes"]}
            assert volumes["tls"]["secret"]["secretName"] == f"{workload.service}-tls"
            for path in (settings.tls.cert_file, settings.tls.key_file, settings.tls.ca_file):
                assert PurePosixPath(path).parent == PurePosixPath(mounts["tls"]), path
        if overlay == "dev":
            assert settings.database_url.startswith(f"postgresql://{workload.service}:")
            assert (identity.keys_path, identity.signing_key_file) == ("", "")  # the derived dev keys
        else:
            # The public keys from the ConfigMap giftcoin-jwks, mounted as a folder (so updates arrive in
            # place); gifting's own private key from its Secret, in its Deployment only.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in workload.pod_spec["volumes"]}
            assert volumes[mounts[identity.keys_path]]["configMap"]["name"] == "giftcoin-jwks"
            if workload.kind == "Deployment" and workload.service == "gifting":
                key_dir = str(PurePosixPath(identity.signing_key_file).parent)
                assert volumes[mounts[key_dir]]["secret"]["secretName"] == "gifting-jwt-signing-key"
            else:
                assert not any("secret" in v and "signing" in v["secret"]["secretName"] for v in volumes.values())


def test_gifting_calls_its_peers_through_their_headless_services(objects: list[kube.Obj]) -> None:
    (gifting,) = [w for w in kube.workloads(objects) if w.kind == "Deployment" and w.service == "gifting"]
    settings: Any = _load("gifting", kube.container_env(gifting.pod_spec["containers"][0], objects))
    for peer, target in (("wallet", settings.wallet_target), ("payout", settings.payout_target)):
        # dns:/// + a headless Service: every pod's address, for the channel's round_robin.
        assert target == f"dns:///{peer}-headless.{kube.NAMESPACE}.svc:{kube.SERVICES[peer][0]}"
        service = kube.find(objects, "Service", f"{peer}-headless")
        assert service is not None and service["spec"]["clusterIP"] == "None"


def test_no_test_hook_is_configured(objects: list[kube.Obj]) -> None:
    for workload, container in _service_containers(objects):
        assert not any("FAILPOINT" in name for name in kube.container_env(container, objects)), workload.name


def test_gifting_holds_last_no_longer_than_the_wallet_allows(objects: list[kube.Obj]) -> None:
    """A gift's hold must be one the wallet grants: the saga relies on its full lifetime."""
    loaded: dict[str, Any] = {}
    for workload, container in _service_containers(objects):
        if workload.kind == "Deployment":
            assert workload.service is not None
            loaded[workload.service] = _load(workload.service, kube.container_env(container, objects))
    assert loaded["gifting"].hold_ttl_seconds <= loaded["wallet"].hold_ttl_max_seconds


def _reconciler_container(objects: list[kube.Obj]) -> kube.Obj:
    (workload,) = [w for w in kube.workloads(objects) if w.name == kube.RECONCILER]
    (container,) = workload.containers()
    return container


def test_the_reconciler_is_set_only_what_it_reads_and_it_loads(objects: list[kube.Obj], overlay: str) -> None:
    from services.reconciler.settings import load_settings

    environment = kube.container_env(_reconciler_container(objects), objects)
    read = Env(DEV_ENVIRONMENT)
    load_settings(read)
    assert set(environment) - read.names - OTEL_NAMES == set()
    settings = load_settings(Env(environment))
    assert environment["OTEL_SERVICE_NAME"] == "giftcoin-reconciler"
    (workload,) = [w for w in kube.workloads(objects) if w.name == kube.RECONCILER]
    volumes = {v["name"]: v for v in workload.pod_spec["volumes"]}
    identity = settings.identity
    if overlay == "dev":
        assert identity.signing_key_file == ""  # the derived dev key of service:reconciler
    else:
        # Its own private key (it signs service:reconciler tokens), from its Secret; it verifies no token.
        mounts = {m["mountPath"]: m["name"] for m in _reconciler_container(objects)["volumeMounts"]}
        key_dir = str(PurePosixPath(identity.signing_key_file).parent)
        assert volumes[mounts[key_dir]]["secret"]["secretName"] == "reconciler-jwt-signing-key"
        assert "GIFTCOIN_JWT_KEYS" not in environment
    # Each target is a service of the suite, on its gRPC port.
    for name, target in settings.targets.items():
        assert target == f"{name}.{kube.NAMESPACE}.svc:{kube.SERVICES[name][0]}"
    # The same dev mode, exporter and mTLS as the services it reads (its settings are its own ConfigMap).
    (wallet,) = [w for w in kube.workloads(objects) if w.kind == "Deployment" and w.service == "wallet"]
    served = _load("wallet", kube.container_env(wallet.pod_spec["containers"][0], objects))
    assert (settings.trace_exporter, settings.tls.enabled) == (served.trace_exporter, served.tls.enabled)
    assert (identity.issuer, identity.audience) == (served.identity.issuer, served.identity.audience)
    assert (environment["GIFTCOIN_DEV_MODE"] == "true") is served.dev_mode is (overlay == "dev")
    if settings.tls.enabled:
        assert volumes["tls"]["secret"]["secretName"] == "reconciler-tls"
