"""What every giftctl command needs: who it acts as, where the services are, and readable failures.

giftctl talks to the services through the shared runtime's channels (`runtime.clients.open_channel`):
a signed dev token for the `--as` identity, retries on UNAVAILABLE, a deadline on every call.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from giftcoin.gifting.v1 import gifting_pb2_grpc
from giftcoin.payout.v1 import payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2_grpc

from services.runtime.auth import ISSUER, Caller, CallerKind, TokenSource
from services.runtime.clients import open_channel
from services.runtime.config import DEFAULT_PORTS, ConfigError, IdentitySettings
from services.runtime.errors import from_rpc_error

SERVICES = ("wallet", "gifting", "payout")
FULL_NAMES = {
    "wallet": "giftcoin.wallet.v1.WalletService",
    "gifting": "giftcoin.gifting.v1.GiftingService",
    "payout": "giftcoin.payout.v1.PayoutService",
}
# Read-only catalogue calls need some signed identity; this one owns nothing.
ANONYMOUS = Caller(CallerKind.USER, "anonymous")


class CliError(Exception):
    """A failure reported as one line on stderr, with an exit status (never a traceback).

    `line` is the whole line ("giftctl: " and the message, unless given); `details` what --json prints
    of it (a refusal's code, reason, metadata and field violations)."""

    def __init__(
        self, message: str, exit_status: int = 1, line: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status
        self.line = line or f"giftctl: {message}"
        self.details = details or {"message": message}

    def as_json(self) -> str:
        return json.dumps({"error": {**self.details, "exit_status": self.exit_status}}, sort_keys=True)


def target_env_name(service: str) -> str:
    return f"GIFTCOIN_{service.upper()}_TARGET"


def default_target(service: str) -> str:
    return os.environ.get(target_env_name(service), f"127.0.0.1:{DEFAULT_PORTS[service]}")


def token_source(caller: Caller) -> TokenSource:
    """The tokens giftctl sends as `caller`: signed with the private JWK in $GIFTCOIN_JWT_SIGNING_KEY_FILE
    (an issuer's key) when set, else with the services' dev-mode keys; with $GIFTCOIN_JWT_ISSUER and
    $GIFTCOIN_JWT_AUDIENCE as the services expect them."""
    env = os.environ
    identity = IdentitySettings(
        dev_mode=True,
        issuer=env.get("GIFTCOIN_JWT_ISSUER") or ISSUER,
        audience=env.get("GIFTCOIN_JWT_AUDIENCE", ""),
        signing_key_file=env.get("GIFTCOIN_JWT_SIGNING_KEY_FILE", ""),
    )
    try:
        return TokenSource.for_settings(identity, caller)
    except ConfigError as exc:
        raise CliError(f"cannot sign a token for {caller.subject}: {exc}") from None


def describe_rpc_error(service: str, target: str, err: grpc.RpcError) -> str:
    """One line for a failed call: the service's code, reason and message, or why it could not be reached."""
    error = from_rpc_error(err)
    if error is not None:
        line = f"{service} refused: {error.code.name} {error.reason}: {error.message}"
        if error.violations:  # each field, and what is wrong with it unless the message said it already
            named = [
                v.field if v.description == error.message else f"{v.field}: {v.description}" for v in error.violations
            ]
            line += " (" + "; ".join(named) + ")"
        return line
    code = err.code() if isinstance(err, grpc.Call) else None
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"{service} at {target} is not reachable (is it running? `giftctl up` starts the suite)"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{service} at {target} did not answer in time"
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return f"{service} at {target} failed: {code.name if code else 'UNKNOWN'}: {details}"


@dataclass
class Session:
    """The identity and targets of one giftctl invocation; opens channels lazily."""

    caller: Caller
    targets: dict[str, str]
    fixed_request_id: str = ""
    _channels: dict[tuple[str, Caller], grpc.Channel] = field(default_factory=dict)

    def request_id(self) -> str:
        """--request-id when given (to replay a call), else a fresh UUID4 per call."""
        return self.fixed_request_id or str(uuid.uuid4())

    def channel(self, service: str, caller: Caller | None = None) -> grpc.Channel:
        who = caller or self.caller
        key = (service, who)
        if key not in self._channels:
            self._channels[key] = open_channel(self.targets[service], FULL_NAMES[service], token_source(who))
        return self._channels[key]

    def wallet(self, caller: Caller | None = None) -> wallet_pb2_grpc.WalletServiceStub:
        return wallet_pb2_grpc.WalletServiceStub(self.channel("wallet", caller))

    def gifting(self, caller: Caller | None = None) -> gifting_pb2_grpc.GiftingServiceStub:
        return gifting_pb2_grpc.GiftingServiceStub(self.channel("gifting", caller))

    def payout(self, caller: Caller | None = None) -> payout_pb2_grpc.PayoutServiceStub:
        return payout_pb2_grpc.PayoutServiceStub(self.channel("payout", caller))

    def failure(self, service: str, err: grpc.RpcError) -> CliError:
        message = describe_rpc_error(service, self.targets[service], err)
        error = from_rpc_error(err)
        if error is None:
            return CliError(message, details={"service": service, "message": message})
        details = {
            "service": service,
            "code": error.code.name,
            "reason": error.reason,
            "message": error.message,
            "metadata": dict(error.metadata),
            "field_violations": [{"field": v.field, "description": v.description} for v in error.violations],
        }
        return CliError(message, details=details)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
