"""Domain errors and their mapping to gRPC status with google.rpc details (AIP-193).

Domain code raises these; only the server layer turns them into a gRPC status. A reason is the
name of a `giftcoin.common.v1.ErrorReason` value without its prefix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from giftcoin.common.v1 import common_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

Res = TypeVar("Res", bound=Message)

_REASON_PREFIX = "ERROR_REASON_"
KNOWN_REASONS = frozenset(
    name.removeprefix(_REASON_PREFIX)
    for name in common_pb2.ErrorReason.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
    if name != "ERROR_REASON_UNSPECIFIED"
)


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class DomainError(Exception):
    """A refusal with a canonical code, a stable reason and the values its message mentions."""

    code: grpc.StatusCode
    reason: str
    message: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: Sequence[FieldViolation] = ()

    def __post_init__(self) -> None:
        if self.reason not in KNOWN_REASONS:
            raise ValueError(f"unknown error reason {self.reason!r}: add it to common.proto")
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"

    # Stored by the request-id store so that a replay fails the same way.
    def to_json(self) -> str:
        return json.dumps(
            {
                "code": self.code.name,
                "reason": self.reason,
                "message": self.message,
                "metadata": dict(self.metadata),
                "violations": [[v.field, v.description] for v in self.violations],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str) -> DomainError:
        data = json.loads(raw)
        return cls(
            code=grpc.StatusCode[data["code"]],
            reason=data["reason"],
            message=data["message"],
            metadata=data["metadata"],
            violations=tuple(FieldViolation(f, d) for f, d in data["violations"]),
        )


def _error(code: grpc.StatusCode, reason: str, message: str, **metadata: object) -> DomainError:
    return DomainError(code, reason, message, {k: str(v) for k, v in metadata.items()})


def invalid_argument(violations: Sequence[FieldViolation]) -> DomainError:
    fields = ", ".join(v.field for v in violations)
    return DomainError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        f"invalid request: {fields}",
        {"fields": fields},
        tuple(violations),
    )


def bad_field(reason: str, field: str, message: str, violation: str = "", **metadata: object) -> DomainError:
    """INVALID_ARGUMENT with a reason of its own (not the generic INVALID_ARGUMENT) and the field named in
    google.rpc.BadRequest (described by `violation`, or else the message): a request whose field names
    something this service does not offer."""
    return DomainError(
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
        message,
        {k: str(v) for k, v in metadata.items()},
        (FieldViolation(field, violation or message),),
    )


def not_found(reason: str, message: str, **metadata: object) -> DomainError:
    return _error(grpc.StatusCode.NOT_FOUND, reason, message, **metadata)


def already_exists(reason: str, message: str, **metadata: object) -> DomainError:
    return _error(grpc.StatusCode.ALREADY_EXISTS, reason, message, **metadata)


def failed_precondition(reason: str, message: str, **metadata: object) -> DomainError:
    return _error(grpc.StatusCode.FAILED_PRECONDITION, reason, message, **metadata)


def permission_denied(message: str, **metadata: object) -> DomainError:
    return _error(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", message, **metadata)


def unauthenticated(message: str) -> DomainError:
    return _error(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message)


def aborted(reason: str, message: str, **metadata: object) -> DomainError:
    return _error(grpc.StatusCode.ABORTED, reason, message, **metadata)


def malformed_request(method: str, error: Exception) -> DomainError:
    """Bytes that are not the method's request message (truncated, mistyped, invalid UTF-8 in a string)."""
    return DomainError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
        f"the request is not a valid {method} request message: {error}",
        {"method": method},
    )


def unavailable(reason: str, message: str, **metadata: object) -> DomainError:
    return _error(grpc.StatusCode.UNAVAILABLE, reason, message, **metadata)


def resource_exhausted(reason: str, message: str, **metadata: object) -> DomainError:
    return _error(grpc.StatusCode.RESOURCE_EXHAUSTED, reason, message, **metadata)


def to_rpc_status(error: DomainError, domain: str) -> status_pb2.Status:
    """The google.rpc.Status for an error: ErrorInfo always, BadRequest for field violations."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=dict(error.metadata))
    details = [info]
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
                ]
            )
        )
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)


def from_rpc_error(err: grpc.RpcError) -> DomainError | None:
    """The DomainError a peer service sent, if its status carries an ErrorInfo."""
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)
    if status is None:
        return None
    reason, metadata, violations = "", {}, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    if reason not in KNOWN_REASONS:
        return None
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    return DomainError(code, reason, status.message, metadata, tuple(violations))


def to_item_error(error: DomainError) -> common_pb2.ItemError:
    """A batch item's error: the same code, reason, metadata and violations as the unary RPC's status."""
    return common_pb2.ItemError(
        code=error.code.value[0],
        reason=error.reason,
        message=error.message,
        metadata=dict(error.metadata),
        field_violations=[
            common_pb2.FieldViolation(field=v.field, description=v.description) for v in error.violations
        ],
    )


def item_results(result_type: type[Res], outcomes: Sequence[Message | DomainError]) -> list[Res]:
    """A batch RPC's results: each outcome as its `oneof outcome { response; error }`."""
    return [
        result_type(error=to_item_error(o)) if isinstance(o, DomainError) else result_type(response=o) for o in outcomes
    ]


def from_item_error(item: common_pb2.ItemError) -> DomainError | None:
    """The DomainError a batch item failed with; None if its reason is not one we know (a newer peer)."""
    if item.reason not in KNOWN_REASONS:
        return None
    code = next((c for c in grpc.StatusCode if c.value[0] == item.code), None)
    if code is None or code is grpc.StatusCode.OK:
        return None
    violations = tuple(FieldViolation(v.field, v.description) for v in item.field_violations)
    return DomainError(code, item.reason, item.message, dict(item.metadata), violations)
