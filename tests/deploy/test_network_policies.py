"""The network policies allow the calls the design makes, and nothing else.

Every workload the overlay runs, plus what lives outside the namespace (clients, cluster DNS,
the trace backend, external databases, the internet), is an endpoint; for every pair and every
port the destination listens on (and one it does not), the policy model says allowed or not, and
that matrix must equal the design's.
"""

from __future__ import annotations

import pytest

from tests.deploy import kube
from tests.deploy.netpol import Endpoint, Port, allowed, side_allows

# The services' callers run in namespaces labelled giftcoin.io/client=true; other namespaces are not clients.
EDGE = Endpoint(
    "edge", "edge", {"app.kubernetes.io/name": "edge-gateway"}, namespace_labels={"giftcoin.io/client": "true"}
)
STRANGER = Endpoint("stranger", "tools", {"app.kubernetes.io/name": "edge-gateway"})
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, (Port(53, "UDP"), Port(53, "TCP")))
# Prometheus runs in a namespace labelled giftcoin.io/monitoring=true; it scrapes the services' metrics.
PROMETHEUS = Endpoint(
    "prometheus",
    "monitoring",
    {"app.kubernetes.io/name": "prometheus"},
    (Port(9090),),  # its OTLP receiver: the reconciliation job's metrics, through the collector (prod)
    namespace_labels={"giftcoin.io/monitoring": "true"},
)
TRACE_BACKEND = Endpoint("trace-backend", "observability", {"app.kubernetes.io/name": "tempo"}, (Port(4317),))
INTERNET = Endpoint("internet", None, ports=(Port(443), Port(5432), Port(4317)), ip="203.0.113.7")
# The prod overlay's placeholder database addresses (overlays/prod/database-egress.yaml).
EXTERNAL_DATABASES = {"wallet": "192.0.2.11", "gifting": "192.0.2.12", "payout": "192.0.2.13"}
UNUSED_PORT = Port(9999)

Call = tuple[str, str, int, str]  # source, destination, port, protocol


def _endpoints(objects: list[kube.Obj], overlay: str) -> list[Endpoint]:
    endpoints = [EDGE, STRANGER, PROMETHEUS, KUBE_DNS, TRACE_BACKEND, INTERNET]
    for number, workload in enumerate(kube.workloads(objects), start=1):
        ports = tuple(
            Port(p["containerPort"], p.get("protocol", "TCP"), p.get("name", ""))
            for container in workload.containers()
            for p in container.get("ports", [])
        )
        endpoints.append(Endpoint(workload.name, workload.namespace, workload.labels, ports, ip=f"10.244.0.{number}"))
    if overlay == "prod":
        endpoints += [
            Endpoint(f"{svc}-database", None, ports=(Port(5432),), ip=address)
            for svc, address in EXTERNAL_DATABASES.items()
        ]
    return endpoints


def _design(endpoints: list[Endpoint], overlay: str) -> set[Call]:
    """The calls the design makes (docs/deploy.md, "Network policies")."""
    calls: set[Call] = set()
    for svc, (port, _) in kube.SERVICES.items():
        calls.add(("edge", svc, port, "TCP"))  # clients call every service
        calls.add((svc, "otel-collector", 4317, "TCP"))  # spans
        calls.add(("prometheus", svc, 9464, "TCP"))  # metrics, scraped
        database = f"{svc}-postgres" if overlay == "dev" else f"{svc}-database"
        calls.add((svc, database, 5432, "TCP"))  # each service its own database...
        calls.add((f"{svc}-migrate", database, 5432, "TCP"))  # ...and its migration Job
    calls.add(("gifting", "wallet", 50051, "TCP"))  # the saga: hold, capture, release
    calls.add(("edge", "wallet", 8080, "TCP"))  # the stores' notifications, relayed by the edge
    calls.add(("wallet", "internet", 443, "TCP"))  # the stores' APIs (Google Play, Apple's OCSP)
    calls.add(("gifting", "payout", 50053, "TCP"))  # the saga: credit diamonds
    for svc, (port, _) in kube.SERVICES.items():  # the reconciliation job reads the books, no database
        calls.add((kube.RECONCILER, svc, port, "TCP"))
    calls.add((kube.RECONCILER, "otel-collector", 4317, "TCP"))  # its metrics (a run ends before any scrape)
    if overlay == "prod":
        calls.add(("otel-collector", "trace-backend", 4317, "TCP"))
        calls.add(("otel-collector", "prometheus", 9090, "TCP"))  # ...which go on to Prometheus
    for endpoint in endpoints:
        if endpoint.namespace == kube.NAMESPACE:
            calls |= {(endpoint.name, "kube-dns", 53, "UDP"), (endpoint.name, "kube-dns", 53, "TCP")}
    return calls


def _matrix(objects: list[kube.Obj], endpoints: list[Endpoint]) -> set[Call]:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    calls: set[Call] = set()
    for source in endpoints:
        for destination in endpoints:
            if source is destination or kube.NAMESPACE not in (source.namespace, destination.namespace):
                continue  # a pod cannot block itself; traffic elsewhere is not ours to rule
            for port in {*destination.ports, UNUSED_PORT}:
                if allowed(policies, source, destination, port):
                    calls.add((source.name, destination.name, port.number, port.protocol))
    return calls


def test_the_policies_allow_exactly_the_calls_the_design_makes(objects: list[kube.Obj], overlay: str) -> None:
    endpoints = _endpoints(objects, overlay)
    names = {e.name for e in endpoints}
    expected = _design(endpoints, overlay)
    assert {c[1] for c in expected} <= names and {c[0] for c in expected} <= names, (
        "the design names a missing workload"
    )
    actual = _matrix(objects, endpoints)
    assert not actual - expected, f"allowed but not in the design: {sorted(actual - expected)}"
    assert not expected - actual, f"in the design but blocked: {sorted(expected - actual)}"


def test_inside_the_namespace_each_side_alone_already_allows_only_the_design(
    objects: list[kube.Obj], overlay: str
) -> None:
    """Defence in depth: a call between our pods needs the caller's egress rule and the callee's
    ingress rule, and neither is broader than the design (one slip does not open a path)."""
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    endpoints = [e for e in _endpoints(objects, overlay) if e.namespace == kube.NAMESPACE]
    expected = _design(endpoints, overlay)
    for source in endpoints:
        for destination in endpoints:
            for port in {*destination.ports, UNUSED_PORT} if source is not destination else ():
                call = (source.name, destination.name, port.number, port.protocol)
                for direction, subject, peer in (("Egress", source, destination), ("Ingress", destination, source)):
                    if side_allows(policies, direction, subject, peer, port, destination):
                        assert call in expected, f"{direction} of {subject.name} allows {call}"


def test_every_pod_is_isolated_both_ways(objects: list[kube.Obj]) -> None:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = kube.find(objects, "NetworkPolicy", "default-deny")
    assert deny is not None
    assert deny["spec"]["podSelector"] == {} and sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")
    assert all(p["metadata"]["namespace"] == kube.NAMESPACE for p in policies)


# The model itself, on small cases whose answer the Kubernetes documentation gives.


def _policy(spec: kube.Obj, namespace: str = "shop") -> kube.Obj:
    return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": namespace}, "spec": spec}


WEB = Endpoint("web", "shop", {"app": "web"}, (Port(8080, "TCP", "http"),), ip="10.0.0.1")
DB = Endpoint("db", "shop", {"app": "db"}, (Port(5432),), ip="10.0.0.2")
OTHER = Endpoint("other", "tools", {"app": "web"}, (Port(8080),), ip="10.0.0.3")


def test_model_without_policies_everything_is_allowed() -> None:
    assert allowed([], WEB, DB, Port(5432))


def test_model_a_default_deny_blocks_both_directions() -> None:
    deny = _policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    assert not allowed([deny], WEB, DB, Port(5432))
    assert not allowed([deny], OTHER, WEB, Port(8080))  # ingress from another namespace
    assert allowed([deny], OTHER, INTERNET, Port(443))  # a policy only governs its own namespace


def test_model_both_the_egress_and_the_ingress_side_must_allow() -> None:
    deny = _policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    egress = _policy({"podSelector": {"matchLabels": {"app": "web"}}, "egress": [{"to": [{"podSelector": {}}]}]})
    ingress = _policy({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 5432}]}]})
    assert not allowed([deny, egress], WEB, DB, Port(5432))
    assert not allowed([deny, ingress], WEB, DB, Port(5432))
    assert allowed([deny, egress, ingress], WEB, DB, Port(5432))
    assert not allowed([deny, egress, ingress], WEB, DB, Port(5433))


@pytest.mark.parametrize(
    ("peer", "other_namespace_allowed"),
    [
        ({"podSelector": {"matchLabels": {"app": "web"}}}, False),  # a podSelector alone: own namespace
        ({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}, True),  # AND, any namespace
        ({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}, False),
    ],
)
def test_model_peer_selectors(peer: kube.Obj, other_namespace_allowed: bool) -> None:
    policy = _policy({"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"from": [peer]}]})
    assert allowed([policy], WEB, DB, Port(5432))
    assert allowed([policy], OTHER, DB, Port(5432)) is other_namespace_allowed


def test_model_named_ports_ip_blocks_and_ranges() -> None:
    named = _policy({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}]}]})
    assert allowed([named], DB, WEB, Port(8080))
    assert not allowed([named], DB, WEB, Port(8081))
    block = _policy(
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.7/32"]}}]}],
        }
    )
    assert not allowed([block], WEB, INTERNET, Port(443))
    elsewhere = Endpoint("elsewhere", None, ports=(Port(443),), ip="203.0.113.8")
    assert allowed([block], WEB, elsewhere, Port(443))
    assert not allowed([block], WEB, DB, Port(5432))  # a pod outside the block
    ranged = _policy(
        {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [{"port": 5000, "endPort": 5500}]}]}
    )
    assert allowed([ranged], WEB, DB, Port(5432))
    assert not allowed([ranged], WEB, DB, Port(5432, "UDP"))
