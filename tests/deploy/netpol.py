"""A small model of Kubernetes NetworkPolicy semantics, to evaluate the rendered policies offline.

A connection from `source` to `destination` on (port, protocol) is allowed when the source's
egress allows it and the destination's ingress allows it. A side is unrestricted when no policy
of its namespace selects it for that direction; else some rule of those policies must match both
the peer (podSelector / namespaceSelector / ipBlock) and the port (number, name, range).
Traffic from a pod's own node (kubelet probes) is always allowed and is not modelled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Policy = dict[str, Any]


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels) or an address outside the cluster (namespace None)."""

    name: str
    namespace: str | None
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[Port, ...] = ()
    ip: str = ""
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector; an empty one matches everything."""
    selector = selector or {}
    for name, value in (selector.get("matchLabels") or {}).items():
        if labels.get(name) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        name, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = name in labels
        if operator == "In" and not (present and labels[name] in values):
            return False
        if operator == "NotIn" and present and labels[name] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def policy_types(policy: Policy) -> list[str]:
    spec = policy["spec"]
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def _namespace_labels(endpoint: Endpoint) -> dict[str, str]:
    # kubernetes.io/metadata.name is set on every namespace by the API server.
    return {**endpoint.namespace_labels, "kubernetes.io/metadata.name": str(endpoint.namespace)}


def _selects(policy: Policy, endpoint: Endpoint) -> bool:
    return endpoint.namespace == policy["metadata"].get("namespace", "default") and selector_matches(
        policy["spec"].get("podSelector"), endpoint.labels
    )


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip) if other.ip else None
        return (
            address is not None
            and address in ipaddress.ip_network(block["cidr"])
            and not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
        )
    if other.namespace is None:  # selectors match pods only
        return False
    if "namespaceSelector" in peer:
        in_namespace = selector_matches(peer["namespaceSelector"], _namespace_labels(other))
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selector_matches(peer.get("podSelector"), other.labels)


def _port_matches(rule_port: Mapping[str, Any], port: Port, destination: Endpoint) -> bool:
    if rule_port.get("protocol", "TCP") != port.protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):  # a named port: the destination pod's container port of that name
        return any(
            p.name == wanted and p.protocol == port.protocol and p.number == port.number for p in destination.ports
        )
    return int(wanted) <= port.number <= int(rule_port.get("endPort", wanted))


def side_allows(
    policies: Iterable[Policy], direction: str, subject: Endpoint, peer: Endpoint, port: Port, destination: Endpoint
) -> bool:
    """Whether `subject`'s own policies let it send to (Egress) or receive from (Ingress) `peer`."""
    if subject.namespace is None:
        return True  # outside the cluster: no policy of ours applies
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    selecting = [p for p in policies if _selects(p, subject) and direction in policy_types(p)]
    if not selecting:
        return True
    for policy in selecting:
        namespace = policy["metadata"].get("namespace", "default")
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key) or []
            ports = rule.get("ports") or []
            if peers and not any(_peer_matches(p, namespace, peer) for p in peers):
                continue
            if ports and not any(_port_matches(p, port, destination) for p in ports):
                continue
            return True
    return False


def allowed(policies: list[Policy], source: Endpoint, destination: Endpoint, port: Port) -> bool:
    return side_allows(policies, "Egress", source, destination, port, destination) and side_allows(
        policies, "Ingress", destination, source, port, destination
    )
