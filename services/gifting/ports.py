"""What the saga asks of its peers (wallet's holds, payout's credits) and how it reads their answers.

The ports are plain Python: services/gifting/peers.py speaks them over gRPC, tests may give their own.
Every step is an idempotent RPC keyed by the transfer id, with a request id derived from it
(`step_request_id`), so a step asked again never moves value twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.runtime.errors import DomainError

log = logging.getLogger(__name__)


# --- the peers ---------------------------------------------------------------------------------------


class StepUncertain(Exception):
    """A peer gave no definite answer (down, timed out, busy): the step may or may not have happened.

    Every step is idempotent, so the answer is always to ask again, with the same request id.
    """


class Refused(Exception):
    """A peer's definite refusal (its code, reason and metadata in `error`): the step did not happen."""

    def __init__(self, error: DomainError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Hold:
    """A wallet hold as gifting sees it."""

    amount: int
    promotional_amount: int
    state: str  # held | captured | released | expired
    expire_time: datetime


@dataclass(frozen=True)
class HoldOrder:
    request_id: str
    gift_id: str
    user_id: str
    amount: int
    ttl_seconds: int


@dataclass(frozen=True)
class CaptureOrder:
    request_id: str
    gift_id: str


@dataclass(frozen=True)
class ReleaseOrder:
    request_id: str
    gift_id: str


@dataclass(frozen=True)
class CreditOrder:
    request_id: str
    gift_id: str
    creator_id: str
    diamonds: int
    coins: int
    promotional_coins: int
    deadline: datetime | None  # payout credits nothing asked after this (None: rows of earlier versions)


class WalletPort(Protocol):
    """Wallet's holds. Each order is answered (a Hold, or the Refused / StepUncertain it met); a call
    that got no answer at all raises StepUncertain. `timeout`: the longest the call may take."""

    async def hold_many(self, orders: Sequence[HoldOrder], timeout: float) -> list[Hold | Refused | StepUncertain]: ...

    async def capture_many(
        self, orders: Sequence[CaptureOrder], timeout: float
    ) -> list[Hold | Refused | StepUncertain]: ...

    async def release(self, order: ReleaseOrder, timeout: float) -> Hold:
        """Raises Refused or StepUncertain."""
        ...


class PayoutPort(Protocol):
    """Payout's diamond credits: each order answered (None once credited, or the Refused /
    StepUncertain it met); a call that got no answer at all raises StepUncertain."""

    async def credit_many(
        self, orders: Sequence[CreditOrder], timeout: float
    ) -> list[Refused | StepUncertain | None]: ...


def step_request_id(transfer_id: str, step: str) -> str:
    """The request id of a saga step: the same on every retry, by any replica, after any restart:
    uuid5(transfer id, "giftcoin.gifting.<step>")."""
    return str(uuid.uuid5(uuid.UUID(transfer_id), f"giftcoin.gifting.{step}"))


# --- test hooks ----------------------------------------------------------------------------------------

FAILPOINT_EXIT_CODE = 86


class Failpoint:
    """TEST HOOK (GIFTCOIN_GIFTING_FAILPOINT): die at one saga point, like a SIGKILL, to test recovery."""

    def __init__(self, armed: str = "") -> None:
        self.armed = armed

    def __call__(self, point: str) -> None:
        if point == self.armed:
            log.warning("failpoint %s: exiting abruptly (test hook)", point)
            os._exit(FAILPOINT_EXIT_CODE)


NO_FAILPOINT = Failpoint()


def new_lease_owner() -> str:
    return secrets.token_hex(8)


# Payout's refusals after which it has certainly credited nothing for the gift. Not every
# FAILED_PRECONDITION qualifies: CREDIT_MISMATCH says the gift WAS credited (differently).
NOT_CREDITED = {
    "RECIPIENT_CANNOT_RECEIVE",
    "CREATOR_NOT_FOUND",
    "CREATOR_NOT_ELIGIBLE",
    "INVALID_ARGUMENT",
    "CREDIT_DEADLINE_PASSED",
    "BALANCE_LIMIT_EXCEEDED",
}
# Release refusals that mean the coins are already back (or were never held).
NOTHING_HELD = {"HOLD_NOT_FOUND", "HOLD_ALREADY_RELEASED"}


def captured(answer: Hold | Refused) -> bool:
    """Whether a capture's answer says the hold is captured (now, or by an earlier call)."""
    return isinstance(answer, Hold) or answer.error.reason == "HOLD_ALREADY_CAPTURED"
