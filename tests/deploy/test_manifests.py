"""The rendered overlays: valid Kubernetes objects that run the services the way the design needs."""

from __future__ import annotations

import copy
import re

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tests.deploy import kube
from tests.deploy.netpol import selector_matches
from tests.support.processes import STOP_ALLOWANCE_SECONDS

# The oldest Kubernetes the manifests promise to work on (docs/deploy.md), and the newest whose
# schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", latest_version())
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
CLUSTER_SCOPED = {"Namespace"}
DOCS = kube.ROOT / "docs" / "deploy.md"


def _server_deployments(objects: list[kube.Obj]) -> list[kube.Workload]:
    return [w for w in kube.workloads(objects) if w.kind == "Deployment" and w.service]


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (cores or bytes), enough to compare requests with limits."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(
    rendered: dict[str, list[kube.Obj]], rendered_base: list[kube.Obj], version: str
) -> None:
    problems = []
    for name, objects in [*rendered.items(), ("base", rendered_base)]:
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except Exception as error:  # ValidationError, SchemaNotFoundError: both mean "not valid"
                problems.append(f"{name}: {kube.key(obj)}: {getattr(error, 'message', error)}")
    assert not problems, "\n".join(problems)


def test_the_schema_check_rejects_a_misspelt_field_and_a_wrong_type(rendered: dict[str, list[kube.Obj]]) -> None:
    deployment = kube.find(rendered["prod"], "Deployment", "wallet")
    assert deployment is not None
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 8081
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "thirty"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_everything_lives_in_the_giftcoin_namespace_which_enforces_restricted_pods(objects: list[kube.Obj]) -> None:
    outside = [
        kube.key(o)
        for o in objects
        if o["kind"] not in CLUSTER_SCOPED and o["metadata"].get("namespace") != kube.NAMESPACE
    ]
    assert not outside
    namespace = kube.find(objects, "Namespace", kube.NAMESPACE)
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_every_container_runs_locked_down(objects: list[kube.Obj]) -> None:
    problems = []
    for workload in kube.workloads(objects):
        pod = workload.pod_spec
        pod_security = pod.get("securityContext", {})
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{workload.name}: {flag}")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{workload.name}: automountServiceAccountToken is not false")
        for container in workload.containers():
            where = f"{workload.name}/{container['name']}"
            security = container.get("securityContext", {})

            # runAsNonRoot, runAsUser and seccompProfile may come from the pod; the container's win.
            effective = {**pod_security, **security}
            if effective.get("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if effective.get("runAsUser") in (None, 0):
                problems.append(f"{where}: no numeric non-root runAsUser")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if security.get("privileged"):
                problems.append(f"{where}: privileged")
            capabilities = security.get("capabilities", {})
            if capabilities.get("drop") != ["ALL"] or capabilities.get("add"):
                problems.append(f"{where}: capabilities are not drop [ALL] with nothing added")
            seccomp = effective.get("seccompProfile") or {}
            if not isinstance(seccomp, dict) or seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
    assert not problems, "\n".join(problems)


def test_every_container_has_requests_and_limits(objects: list[kube.Obj]) -> None:
    problems = []
    for workload in kube.workloads(objects):
        for container in workload.containers():
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                if request is None or limit is None:
                    problems.append(f"{workload.name}/{container['name']}: {resource} request or limit missing")
                elif _quantity(request) > _quantity(limit):
                    problems.append(f"{workload.name}/{container['name']}: {resource} request above its limit")
    assert not problems, "\n".join(problems)


def test_every_service_pod_is_probed_over_grpc_on_its_health_port(objects: list[kube.Obj]) -> None:
    deployments = _server_deployments(objects)
    assert sorted(d.name for d in deployments) == sorted(kube.SERVICES)
    for deployment in deployments:
        assert deployment.service is not None
        grpc_port, full_name = kube.SERVICES[deployment.service]
        (container,) = deployment.pod_spec["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == grpc_port
        health_port = ports["health"]
        assert health_port != grpc_port, "the kubelet cannot probe the mTLS port: health needs its own"
        assert kube.container_env(container, objects)["GIFTCOIN_HEALTH_PORT"] == str(health_port)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == health_port, f"{deployment.name} {probe}"
        # Ready means this service is SERVING (NOT_SERVING from SIGTERM on), not merely the process.
        assert container["readinessProbe"]["grpc"]["service"] == full_name
        assert container["livenessProbe"]["grpc"].get("service", "") == ""


def test_every_long_running_container_has_liveness_and_readiness_probes(objects: list[kube.Obj]) -> None:
    for workload in kube.workloads(objects):
        if workload.kind in ("Job", "CronJob"):  # they run to completion
            continue
        for container in workload.pod_spec["containers"]:
            assert "livenessProbe" in container, f"{workload.name}/{container['name']}"
            assert "readinessProbe" in container, f"{workload.name}/{container['name']}"


def test_termination_grace_covers_the_pre_stop_pause_the_drain_and_the_last_export(objects: list[kube.Obj]) -> None:
    for deployment in _server_deployments(objects):
        (container,) = deployment.pod_spec["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", "preStop pauses so that endpoint removal spreads before the drain"
        pre_stop = int(command[1])
        environment = kube.container_env(container, objects)
        drain = int(environment["GIFTCOIN_SHUTDOWN_GRACE_SECONDS"])
        export = int(environment["GIFTCOIN_TELEMETRY_TIMEOUT_MS"]) / 1000
        assert pre_stop > 0
        # The bound tests/observability/test_shutdown.py holds a stopping service to, after preStop.
        needed = pre_stop + drain + STOP_ALLOWANCE_SECONDS + export
        assert deployment.pod_spec["terminationGracePeriodSeconds"] > needed, deployment.name


def test_prometheus_scrapes_each_replica_on_its_metrics_port(objects: list[kube.Obj]) -> None:
    for deployment in _server_deployments(objects):
        (container,) = deployment.pod_spec["containers"]
        port = int(kube.container_env(container, objects)["GIFTCOIN_METRICS_PORT"])
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == port
        annotations = deployment.template["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }, deployment.name


def test_rolling_updates_never_drop_below_the_wanted_replicas(objects: list[kube.Obj]) -> None:
    for deployment in _server_deployments(objects):
        assert deployment.obj["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_each_service_has_a_cluster_ip_and_a_headless_service_on_its_server_pods(objects: list[kube.Obj]) -> None:
    migration_labels = {w.service: w.labels for w in kube.workloads(objects) if w.kind == "Job"}
    for deployment in _server_deployments(objects):
        assert deployment.service is not None
        grpc_port, _ = kube.SERVICES[deployment.service]
        for name, headless in ((deployment.service, False), (f"{deployment.service}-headless", True)):
            service = kube.find(objects, "Service", name)
            assert service is not None, name
            spec = service["spec"]
            assert (spec.get("clusterIP") == "None") is headless, name
            selector = spec["selector"]
            assert all(deployment.labels.get(k) == v for k, v in selector.items()), f"{name} misses the server pods"
            assert not all(migration_labels[deployment.service].get(k) == v for k, v in selector.items()), (
                f"{name} would route calls to the migration Job's pod"
            )
            (port,) = spec["ports"]
            assert port["port"] == grpc_port
            assert port["targetPort"] in ("grpc", grpc_port)


def test_each_workload_has_its_own_service_account_without_a_token(objects: list[kube.Obj]) -> None:
    for workload in kube.workloads(objects):
        name = workload.pod_spec.get("serviceAccountName")
        assert name and name != "default", workload.name
        account = kube.find(objects, "ServiceAccount", name)
        assert account is not None, f"{workload.name} uses a missing ServiceAccount {name}"
        assert account.get("automountServiceAccountToken") is False


def test_every_image_is_pinned(objects: list[kube.Obj], overlay: str) -> None:
    for workload in kube.workloads(objects):
        for container in workload.containers():
            image = container["image"]
            if workload.ours:
                # Our image: dev uses what `docker build -t giftcoin:dev` made; prod a released one.
                expected = "giftcoin:dev" if overlay == "dev" else "registry.example.com/giftcoin:"
                assert image.startswith(expected), image
                assert not image.endswith(":latest"), image
            else:
                assert DIGEST.search(image), f"{workload.name}: third-party image {image} is not pinned by digest"


def test_prod_scales_every_service_with_an_autoscaler_and_a_disruption_budget(
    rendered: dict[str, list[kube.Obj]],
) -> None:
    objects = rendered["prod"]
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for deployment in (w for w in kube.workloads(objects) if w.kind == "Deployment"):
        covering = [b for b in budgets if selector_matches(b["spec"]["selector"], deployment.labels)]
        assert len(covering) == 1, f"{deployment.name}: {len(covering)} PodDisruptionBudgets"
        if deployment.service is None:
            continue
        (autoscaler,) = [
            o
            for o in objects
            if o["kind"] == "HorizontalPodAutoscaler" and o["spec"]["scaleTargetRef"]["name"] == deployment.name
        ]
        assert autoscaler["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert autoscaler["spec"]["minReplicas"] >= 2
        assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"]
        # A budget allowing no disruption at all would block every node drain.
        assert covering[0]["spec"].get("maxUnavailable", 0) >= 1 or covering[0]["spec"].get("minAvailable", 0) < 2
        # Replicas belong to the autoscaler: a count here would reset it on every apply.
        assert "replicas" not in deployment.obj["spec"], deployment.name


def test_dev_runs_one_replica_of_everything_without_autoscaling(rendered: dict[str, list[kube.Obj]]) -> None:
    objects = rendered["dev"]
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    for workload in kube.workloads(objects):
        if workload.kind not in ("Job", "CronJob"):
            assert workload.obj["spec"]["replicas"] == 1, workload.name


def test_dev_is_self_contained_and_prod_brings_its_own_database_and_secrets(
    rendered: dict[str, list[kube.Obj]],
) -> None:
    dev, prod = rendered["dev"], rendered["prod"]
    assert sorted(o["metadata"]["name"] for o in dev if o["kind"] == "StatefulSet") == [
        f"{svc}-postgres" for svc in sorted(kube.SERVICES)
    ]
    assert not [o for o in prod if o["kind"] in ("StatefulSet", "PersistentVolumeClaim")]
    # Nothing secret is committed for prod: every Secret its pods use is created by the operator,
    # and docs/deploy.md says how.
    assert not [o for o in prod if o["kind"] == "Secret"]
    docs = DOCS.read_text()
    for name in sorted(_secret_names(prod)):
        assert name in docs, f"docs/deploy.md does not say how to create the Secret {name}"


def test_in_cluster_addresses_name_services_that_exist_on_those_ports(objects: list[kube.Obj]) -> None:
    address = re.compile(rf"([a-z0-9-]+)\.{kube.NAMESPACE}\.svc(?:\.cluster\.local)?:(\d+)")
    found = 0
    for workload in kube.workloads(objects):
        for container in workload.containers():
            for name, value in kube.container_env(container, objects).items():
                for host, port in address.findall(value):
                    found += 1
                    service = kube.find(objects, "Service", host)
                    assert service is not None, f"{workload.name} {name}={value}: no Service {host}"
                    assert int(port) in [p["port"] for p in service["spec"]["ports"]], f"{name}={value}"
    assert found, "expected in-cluster addresses (collector, peers, databases) in the configuration"


def _secret_names(objects: list[kube.Obj]) -> set[str]:
    names = set()
    for workload in kube.workloads(objects):
        for volume in workload.pod_spec.get("volumes", []):
            if "secret" in volume:
                names.add(volume["secret"]["secretName"])
        for container in workload.containers():
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
    return names


def test_the_docs_exist_for_every_overlay() -> None:
    docs = DOCS.read_text()
    for overlay in kube.OVERLAYS:
        assert f"kubectl apply -k deploy/overlays/{overlay}" in docs


def test_the_collector_receives_the_services_traces_and_the_reconcilers_metrics(objects: list[kube.Obj]) -> None:
    (collector,) = [w for w in kube.workloads(objects) if w.name == "otel-collector"]
    (volume,) = [v for v in collector.pod_spec["volumes"] if "configMap" in v]
    config_map = kube.find(objects, "ConfigMap", volume["configMap"]["name"])
    assert config_map is not None
    (config,) = (yaml.safe_load(text) for text in config_map["data"].values())
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    service = kube.find(objects, "Service", "otel-collector")
    assert service is not None and [p["port"] for p in service["spec"]["ports"]] == [4317]
    pipelines = config["service"]["pipelines"]
    # Spans; and the metrics the reconciliation job pushes (a CronJob's run ends before any scrape). The
    # services' metrics are scraped from each replica (GIFTCOIN_METRICS_PORT), not pushed.
    assert set(pipelines) == {"traces", "metrics"}
    for signal in pipelines:
        assert "otlp" in pipelines[signal]["receivers"], signal
        for kind in ("receivers", "processors", "exporters"):
            for name in pipelines[signal][kind]:
                assert name in config[kind], f"{signal} uses an undefined {kind[:-1]} {name}"
    health = config["extensions"]["health_check"]["endpoint"]
    (container,) = collector.pod_spec["containers"]
    health_port = {p["name"]: p["containerPort"] for p in container["ports"]}["health"]
    assert health.endswith(f":{health_port}") and "health_check" in config["service"]["extensions"]


def test_the_reconciler_runs_hourly_one_run_at_a_time_and_fails_its_job_on_discrepancies(
    objects: list[kube.Obj],
) -> None:
    cronjob = kube.find(objects, "CronJob", kube.RECONCILER)
    assert cronjob is not None
    spec = cronjob["spec"]
    minute, hour, *_ = spec["schedule"].split()
    assert minute.isdigit() and hour == "*", "hourly: GIFTCOIN_RECONCILER_WINDOW_SECONDS covers two runs"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    (container,) = job["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "services.reconciler"]
