"""Gifting's rules: the catalogue, the send saga over wallet and payout, histories and leaderboards.

Plain Python: no protobuf, no gRPC calls (grpc.StatusCode only names the codes of errors). Wallet
and payout are reached through `WalletPort` and `PayoutPort` (services/gifting/peers.py speaks gRPC).

The send saga (SPEC §4), persisted on the transfer row so that any replica can resume it:

    recorded -> completed                      hold, credit (before the gift's credit deadline), capture
    recorded -> failed                         wallet refused the hold: nothing held
    recorded -> failing -> failed              payout credited nothing (it refused the recipient, or the
                                               credit deadline had passed): the hold released

Every step is an idempotent RPC keyed by the transfer id, with a request id derived from it, so a
retried step never moves value twice, and nothing is written between the record and the outcome: a
gift found at `recorded` (after a crash, an outage, a lost lease) is driven again from the start, each
step answered again by its peer as it first answered it (a replay), or done now.

The expiring hold. Once diamonds are credited the gift must complete, so no credit may land that its
hold might not back: every credit carries the gift's credit deadline (recorded with the gift: the
hold's life less the safety margin), and payout refuses a credit asked after it (CREDIT_DEADLINE_PASSED)
unless the gift was credited already. That refusal is recorded under the credit's request id and
re-decided the same way for any late copy, so once the deadline has passed, asking payout again tells
for certain whether the gift was credited: a gift whose credit got no answer (payout down, a crash)
is never stuck between the two. A hold made when the gift was recorded outlives the deadline by the
margin; and once credited, a gift only moves forward: the capture is retried until it succeeds (wallet
captures even a lapsed hold, from the balance).

Sends that arrive together go together (`record_sends`, `settle_recorded`: the SendGift batcher): one
transaction records them all, one BatchHoldCoins holds their coins, one BatchCreditDiamonds credits
them, one BatchCaptureHolds captures them, one transaction completes them. The request ids are the
per-gift saga's, so any gift that leaves the common path (a refusal, a peer without an answer) is
driven on from where it stands by the per-gift code, as recovery would, and a batch item and its
per-gift retry share one request id.

Rows written by earlier versions may stand at the steps those wrote: `held` (driven as `recorded`),
and `crediting` / `credited` (credited without a deadline: its credit is asked again as it was, then
captured).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from sqlalchemy import Connection

from services.gifting.storage import (
    ACTIVE,
    COMPLETED,
    CREDITED,
    CREDITING,
    FAILED,
    FAILING,
    HELD,
    PENDING,
    RECORDED,
    RETIRED,
    FeedEventRecord,
    GiftRecord,
    TransferRecord,
    UnitOfWork,
    revised,
)
from services.runtime.clock import Clock
from services.runtime.db import Database
from services.runtime.errors import (
    DomainError,
    FieldViolation,
    aborted,
    already_exists,
    failed_precondition,
    not_found,
    permission_denied,
)
from services.runtime.pagination import CursorValue, decode_page_token, encode_page_token
from services.runtime.pipeline import Later
from services.runtime.telemetry import OUTCOMES, VALUE_MOVED

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
T = TypeVar("T")

MAX_QUANTITY = 9999
MAX_COIN_PRICE = 100_000_000  # keeps quantity * price far inside int64
BPS = 10_000

# SPEC §4's default catalogue: (gift id, name, coin price); diamonds are the default share.
DEFAULT_CATALOGUE = (
    ("rose", "Rose", 1),
    ("finger_heart", "Finger Heart", 5),
    ("doughnut", "Doughnut", 30),
    ("confetti", "Confetti", 100),
    ("money_gun", "Money Gun", 500),
    ("galaxy", "Galaxy", 1000),
    ("sports_car", "Sports Car", 7000),
    ("lion", "Lion", 29999),
    ("universe", "Universe", 34999),
)

TARGET_KINDS = ("live_stream", "video")
WINDOWS = ("target", "day", "all_time")


def creator_diamonds(coins: int, share_bps: int) -> int:
    """The creator's diamonds for a send of `coins` at the default share: THE one rounding of gifting.

    Floored, in the platform's favour: the platform keeps coins - diamonds (a diamond is the creator's
    share of one coin), which includes the fraction the floor drops. Applied to the whole send, so a
    combo of 10 one-coin Roses earns 5 diamonds, not 10 x floor(0.5) = 0.
    """
    return coins * share_bps // BPS


# --- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    kind: str  # live_stream | video
    id: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class Gift:
    gift_id: str
    name: str
    coin_price: int
    diamonds: int  # for one gift sent alone
    version: int
    state: str
    share_bps: int  # the default share a send earns of its whole price; 0: `diamonds` set explicitly


@dataclass(frozen=True)
class Send:
    gift_id: str
    quantity: int
    recipient_id: str
    target: Target


@dataclass(frozen=True)
class SendAsk:
    """One SendGift, validated, as the batch that records it sees it."""

    sender_id: str
    request_id: str
    fingerprint: str  # of the request (runtime.idempotency.fingerprint)
    send: Send
    trace_context: str  # the caller's W3C trace context (JSON): the gift's own trace


@dataclass(frozen=True)
class SendReads:
    """What recording sends reads (`Gifting.read_sends`), queued in the transaction's pipeline."""

    now: datetime  # the sends are recorded at, and count against the day of
    gifts: Later[dict[str, GiftRecord]]
    recorded: Later[dict[tuple[str, str], TransferRecord]]  # by (sender, request id)
    spent: Later[dict[tuple[str, date], int]]  # the senders' day totals, locked


@dataclass(frozen=True)
class Hold:
    """A wallet hold as gifting sees it."""

    amount: int
    promotional_amount: int
    state: str  # held | captured | released | expired
    expire_time: datetime


@dataclass(frozen=True)
class Page:
    transfers: list[TransferRecord]
    next_page_token: str


@dataclass(frozen=True)
class LeaderboardEntry:
    rank: int
    user_id: str
    coins: int
    gifts: int


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
class CreditOrder:
    request_id: str
    gift_id: str
    creator_id: str
    diamonds: int
    coins: int
    promotional_coins: int
    deadline: datetime | None  # payout credits nothing asked after this (None: rows of earlier versions)


class WalletPort(Protocol):
    """Wallet's holds. Raise Refused for a definite refusal, StepUncertain when the outcome is unknown.

    The batch calls answer each order (a Hold, or the Refused / StepUncertain it would have raised
    alone), and raise StepUncertain when the whole call got no answer.
    """

    def hold_many(self, orders: Sequence[HoldOrder]) -> list[Hold | Refused | StepUncertain]: ...

    def capture_many(self, orders: Sequence[CaptureOrder]) -> list[Hold | Refused | StepUncertain]: ...

    def hold_coins(self, order: HoldOrder) -> Hold: ...

    def capture_hold(self, order: CaptureOrder) -> Hold: ...

    def release_hold(self, *, request_id: str, gift_id: str) -> Hold: ...


class PayoutPort(Protocol):
    """Payout's diamond credits. Raise Refused for a definite refusal, StepUncertain when the outcome is unknown.

    `credit_many` answers each order (None once credited, or the Refused / StepUncertain it would
    have raised alone), and raises StepUncertain when the whole call got no answer.
    """

    def credit_many(self, orders: Sequence[CreditOrder]) -> list[Refused | StepUncertain | None]: ...

    def credit_diamonds(self, order: CreditOrder) -> None: ...


def step_request_id(transfer_id: str, step: str) -> str:
    """The request id of a saga step: the same on every retry, by any replica, after any restart.

    uuid5(transfer id, "giftcoin.gifting.<step>") (RFC 4122: SHA-1 of the namespace and the name,
    version 5, the RFC's variant), formatted without building a uuid.UUID for the result: three per
    gift, and building and printing it was half their cost (9 -> 4.6 us).
    """
    digest = bytearray(hashlib.sha1(uuid.UUID(transfer_id).bytes + _STEP_NAMES[step]).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # variant RFC 4122
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_STEP_NAMES = {step: f"giftcoin.gifting.{step}".encode() for step in ("hold", "credit", "capture", "release")}


# --- policy and test hooks -------------------------------------------------------------------------


@dataclass(frozen=True)
class SagaPolicy:
    share_bps: int = 5000
    daily_spend_limit_coins: int = 100_000
    hold_ttl_seconds: int = 300
    hold_safety_margin_seconds: int = 60
    step_attempts: int = 3  # within a SendGift call; recovery tries each step once per pass
    retry_backoff_seconds: float = 0.1  # between attempts within one call
    lease_seconds: int = 30
    retry_base_seconds: float = 1.0  # recovery's wait before retrying a postponed gift, doubling
    retry_max_seconds: float = 60.0
    recovery_batch: int = 50


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


class _Postponed(Exception):
    """The step could not be finished now; the gift waits for recovery (or the client's retry)."""


class _LeaseLost(Exception):
    """Another replica took the gift over; it drives it from here."""


# --- errors ----------------------------------------------------------------------------------------


def _self_gift(recipient_id: str) -> DomainError:
    return DomainError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "SELF_GIFT",
        "a gift cannot be sent to oneself",
        {"recipient_id": recipient_id},
        (FieldViolation("recipient_id", "must not be the sender"),),
    )


def _request_id_reused(request_id: str) -> DomainError:
    return already_exists(
        "REQUEST_ID_REUSED", f"request id {request_id} was already used for a different gift", request_id=request_id
    )


def _with_transfer(error: DomainError, transfer_id: str) -> DomainError:
    """A peer's refusal, passed through with its code and reason, naming the gift it failed."""
    return DomainError(error.code, error.reason, error.message, {**error.metadata, "transfer_id": transfer_id})


def _cannot_receive(refusal: DomainError, t: TransferRecord) -> DomainError:
    """Gifting's own refusal, in a sender's terms (payout's says gift_id for the transfer, creator_id for
    the recipient): the recipient and the transfer, and payout's reason as `cause` when it is another."""
    cause = {} if refusal.reason == "RECIPIENT_CANNOT_RECEIVE" else {"cause": refusal.reason}
    return failed_precondition(
        "RECIPIENT_CANNOT_RECEIVE",
        f"{t.recipient_id} cannot receive gifts ({cause.get('cause') or refusal.message}); the coins were not spent",
        recipient_id=t.recipient_id,
        transfer_id=t.transfer_id,
        **cause,
    )


def _over_daily_limit(t: TransferRecord, limit: int, spent: int, day: date) -> DomainError:
    return DomainError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "DAILY_SPENDING_LIMIT_EXCEEDED",
        f"sending {t.total_coins} coins would pass the daily limit of {limit} (spent today: {spent})",
        {"limit": str(limit), "spent": str(spent), "coins": str(t.total_coins), "day": day.isoformat()},
    )


def _not_credited(refusal: DomainError, t: TransferRecord) -> DomainError:
    """What a gift fails with when payout says for certain that it credited nothing."""
    if refusal.reason == "CREDIT_DEADLINE_PASSED":
        return _gift_failed(t, "EXPIRED", "it waited too long")
    return _cannot_receive(refusal, t)


def _held(t: TransferRecord, hold: Hold) -> TransferRecord:
    """The transfer as its hold left it: how many of its coins are promotional, when the hold lapses."""
    return revised(t, promotional_coins=hold.promotional_amount, hold_expire_at=hold.expire_time)


def _captured(answer: Hold | Refused | StepUncertain) -> bool:
    """Whether a capture's answer says the hold is captured (now, or by an earlier call)."""
    return isinstance(answer, Hold) or (isinstance(answer, Refused) and answer.error.reason == "HOLD_ALREADY_CAPTURED")


def _gift_failed(t: TransferRecord, cause: str, why: str) -> DomainError:
    return failed_precondition(
        "GIFT_FAILED", f"gift {t.transfer_id} failed: {why}; nothing was spent", transfer_id=t.transfer_id, cause=cause
    )


# Payout's refusals after which it has certainly credited nothing for the gift. Not every
# FAILED_PRECONDITION qualifies: CREDIT_MISMATCH says the gift WAS credited (differently).
_NOT_CREDITED = {
    "RECIPIENT_CANNOT_RECEIVE",
    "CREATOR_NOT_FOUND",
    "CREATOR_NOT_ELIGIBLE",
    "INVALID_ARGUMENT",
    "CREDIT_DEADLINE_PASSED",
    "BALANCE_LIMIT_EXCEEDED",
}
# Release refusals that mean the coins are already back (or were never held).
_NOTHING_HELD = {"HOLD_NOT_FOUND", "HOLD_ALREADY_RELEASED"}


def new_lease_owner() -> str:
    return secrets.token_hex(8)


def _day_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def _utc_day(now: datetime) -> date:
    return now.astimezone(UTC).date()


# --- the service ------------------------------------------------------------------------------------


class Gifting:
    """The gifting domain over one database and the two peers."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        wallet: WalletPort,
        payout: PayoutPort,
        policy: SagaPolicy,
        failpoint: Callable[[str], None] = NO_FAILPOINT,
        on_completed: Callable[[str], None] = lambda _target_key: None,
        sleep: Callable[[float], None] = time.sleep,
        tracer: trace.Tracer = tracer,
    ) -> None:
        self.db = db
        self.clock = clock
        self.wallet = wallet
        self.payout = payout
        self.policy = policy
        self.failpoint = failpoint
        self.on_completed = on_completed
        self.sleep = sleep
        self.tracer = tracer  # tests may give one of their own provider

    def _read(self, work: Callable[[UnitOfWork], T]) -> T:
        return self.db.run(lambda conn: work(UnitOfWork(conn)))

    # --- catalogue -----------------------------------------------------------------------------

    def seed_catalogue(self) -> int:
        """Add the default gifts that do not exist yet (at start; replicas may race); returns how many."""
        now = self.clock.now()

        def seed(uow: UnitOfWork) -> int:
            return sum(
                uow.catalogue.add_if_missing(gift_id, name, price, None, self.policy.share_bps, now)
                for gift_id, name, price in DEFAULT_CATALOGUE
            )

        return self._read(seed)

    def list_gifts(self) -> list[Gift]:
        return [self._gift(r) for r in self._read(lambda uow: uow.catalogue.active())]

    def upsert_gift(self, conn: Connection, gift_id: str, name: str, coin_price: int, diamonds: int) -> Gift:
        """Create a gift, or change it: a new price or diamond amount is a new version; it is (back) on sale.

        `diamonds` 0 means the default share, fixed into the version at the share configured now.
        """
        uow, now = UnitOfWork(conn), self.clock.now()
        explicit = diamonds or None
        current = uow.catalogue.get(gift_id)
        if current is None:
            if not uow.catalogue.add_if_missing(gift_id, name, coin_price, explicit, self.policy.share_bps, now):
                raise aborted("CONCURRENT_UPDATE", f"gift {gift_id} was created concurrently; retry", gift_id=gift_id)
            return self._gift(self._must_get(uow, gift_id))
        # What a creator is paid under each: a price, and explicit diamonds or the default share.
        terms = (coin_price, explicit, self.policy.share_bps if explicit is None else None)
        current_terms = (current.coin_price, current.diamonds, current.share_bps if current.diamonds is None else None)
        repriced = terms != current_terms
        changes: dict[str, object] = {"name": name, "state": ACTIVE, "updated_at": now}
        version = current.version + 1 if repriced else current.version
        if repriced:
            changes["current_version"] = version
        if not uow.catalogue.update(gift_id, current.version, **changes):
            raise aborted("CONCURRENT_UPDATE", f"gift {gift_id} changed concurrently; retry", gift_id=gift_id)
        if repriced:  # after the conditional update, which serialises concurrent changes of this gift
            uow.catalogue.add_version(gift_id, version, coin_price, explicit, self.policy.share_bps, now)
        return self._gift(self._must_get(uow, gift_id))

    def retire_gift(self, conn: Connection, gift_id: str) -> Gift:
        uow = UnitOfWork(conn)
        current = self._must_get(uow, gift_id)
        if current.state != RETIRED and not uow.catalogue.update(
            gift_id, current.version, state=RETIRED, updated_at=self.clock.now()
        ):
            raise aborted("CONCURRENT_UPDATE", f"gift {gift_id} changed concurrently; retry", gift_id=gift_id)
        return self._gift(self._must_get(uow, gift_id))

    @staticmethod
    def _must_get(uow: UnitOfWork, gift_id: str) -> GiftRecord:
        gift = uow.catalogue.get(gift_id)
        if gift is None:
            raise not_found("GIFT_NOT_FOUND", f"no gift {gift_id}", gift_id=gift_id)
        return gift

    @staticmethod
    def _gift(r: GiftRecord) -> Gift:
        per_gift = r.diamonds if r.diamonds is not None else creator_diamonds(r.coin_price, r.share_bps)
        share = r.share_bps if r.diamonds is None else 0
        return Gift(r.gift_id, r.name, r.coin_price, per_gift, r.version, r.state, share)

    # --- sending ---------------------------------------------------------------------------------

    def read_sends(self, conn: Connection, asks: Sequence[SendAsk]) -> SendReads:
        """What recording these sends reads, queued in the transaction's pipeline (one round trip, with
        whatever else is queued): the gifts, the sends recorded before under their request ids, and the
        senders' day totals (locked), for the day of now."""
        uow, now = UnitOfWork(conn), self.clock.now()
        day = _utc_day(now)
        return SendReads(
            now,
            uow.catalogue.get_many(a.send.gift_id for a in asks),
            uow.transfers.by_requests((a.sender_id, a.request_id) for a in asks),
            uow.spending.lock((a.sender_id, day) for a in asks if a.send.recipient_id != a.sender_id),
        )

    def record_sends(
        self, conn: Connection, asks: Sequence[SendAsk], lease_owner: str, reads: SendReads | None = None
    ) -> list[TransferRecord | DomainError]:
        """The saga's first step for many sends, in the caller's transaction: each refused, or recorded
        as pending; in order, as if recorded one after another (one sender's sends count against the
        daily limit in turn). Nothing is written for a refused send.

        New transfers are leased to `lease_owner`, who drives them next (`settle_recorded`). A send
        already recorded under its request id is returned as it stands (after the request-id store
        has forgotten the id, the unique (sender, request id) constraint still holds: a concurrent
        one fails this transaction, which is then decided again). Statements, sent in the
        transaction's pipeline: `read_sends` (queued already when given: for these sends or more);
        the day totals and the transfers written with the commit.
        """
        uow = UnitOfWork(conn)
        reads = reads or self.read_sends(conn, asks)
        now, day, limit = reads.now, _utc_day(reads.now), self.policy.daily_spend_limit_coins
        gifts, before, spent = reads.gifts.get(), reads.recorded.get(), reads.spent.get()
        totals = dict(spent)
        outcomes: list[TransferRecord | DomainError] = []
        new: list[TransferRecord] = []
        for ask in asks:
            send = ask.send
            earlier = before.get((ask.sender_id, ask.request_id))
            gift = gifts.get(send.gift_id)
            if send.recipient_id == ask.sender_id:
                outcomes.append(_self_gift(send.recipient_id))
            elif earlier is not None:
                outcomes.append(
                    earlier if earlier.fingerprint == ask.fingerprint else _request_id_reused(ask.request_id)
                )
            elif gift is None:
                outcomes.append(not_found("GIFT_NOT_FOUND", f"no gift {send.gift_id}", gift_id=send.gift_id))
            elif gift.state == RETIRED:
                outcomes.append(
                    failed_precondition(
                        "GIFT_RETIRED", f"gift {gift.gift_id} is no longer on sale", gift_id=gift.gift_id
                    )
                )
            else:
                t = self._new_transfer(ask, gift, day, lease_owner, now)
                total = totals[(t.sender_id, day)]
                if total + t.total_coins > limit:
                    outcomes.append(_over_daily_limit(t, limit, total, day))
                    continue
                totals[(t.sender_id, day)] = total + t.total_coins
                new.append(t)
                outcomes.append(t)
        uow.spending.set({key: coins for key, coins in totals.items() if coins != spent[key]})
        uow.transfers.add_many(new)
        return outcomes

    def _new_transfer(
        self, ask: SendAsk, gift: GiftRecord, day: date, lease_owner: str, now: datetime
    ) -> TransferRecord:
        total_coins = gift.coin_price * ask.send.quantity
        if gift.diamonds is not None:
            total_diamonds = gift.diamonds * ask.send.quantity
        else:
            total_diamonds = creator_diamonds(total_coins, gift.share_bps)
        return TransferRecord(
            transfer_id=str(uuid.uuid4()),
            sender_id=ask.sender_id,
            request_id=ask.request_id,
            fingerprint=ask.fingerprint,
            recipient_id=ask.send.recipient_id,
            target_kind=ask.send.target.kind,
            target_id=ask.send.target.id,
            gift_id=gift.gift_id,
            gift_version=gift.version,
            gift_name=gift.name,
            quantity=ask.send.quantity,
            unit_coin_price=gift.coin_price,
            total_coins=total_coins,
            total_diamonds=total_diamonds,
            promotional_coins=None,
            credit_deadline=self._deadline_from(now),
            state=PENDING,
            step=RECORDED,
            failure_reason="",
            failure_error=None,
            hold_expire_at=None,
            spend_day=day,
            trace_context=ask.trace_context,
            lease_owner=lease_owner,
            lease_until=now + timedelta(seconds=self.policy.lease_seconds),
            attempts=0,
            created_at=now,
            updated_at=now,
            completed_at=None,
        )

    def settle(self, transfer_id: str, lease_owner: str) -> TransferRecord:
        """Drive a recorded send as far as it goes now (a SendGift replay, or a client's retry).

        Returns the transfer COMPLETED, or PENDING if a peer did not answer (recovery finishes it);
        raises the failure a FAILED send ends with, every time it is asked; ABORTED REQUEST_IN_FLIGHT
        while another call or replica drives it.
        """
        if self._claim(transfer_id, lease_owner, take_idle=True):
            t = self._drive(transfer_id, lease_owner, self.policy.step_attempts)
        else:
            t = self._load(transfer_id)
            if t.state == PENDING:
                raise aborted(
                    "REQUEST_IN_FLIGHT",
                    f"gift {transfer_id} is being sent; retry with the same request id",
                    transfer_id=transfer_id,
                )
        if t.state == FAILED:
            raise self.failure(t)
        return t

    def settle_recorded(
        self, recorded: Sequence[TransferRecord], owner: str, make_way: Callable[[], None] = lambda: None
    ) -> list[TransferRecord]:
        """Drive sends just recorded together (leased to `owner`, at step `recorded`), as far as they go now.

        Each step is one batch call for all of them; a gift a step leaves off the common path (a
        refusal, no answer for it) is driven on alone from the step it stands at, as `settle` would.
        `make_way` is called once the credits are answered: the capture and the completion left may
        run beside the next batch's record and holds. Returns each transfer, in order: COMPLETED,
        FAILED, or PENDING (recovery finishes it).
        """
        self.failpoint("after_record")
        finished: dict[str, TransferRecord] = {}
        aside: list[TransferRecord] = []  # off the common path: each driven on alone
        try:
            with self.batch_span("hold", recorded):
                holds = self._call_batch(list(recorded), owner, lambda ts: self.wallet.hold_many(self._hold_orders(ts)))
            self.failpoint("after_hold")
            crediting: list[TransferRecord] = []
            for t, hold in holds:
                if isinstance(hold, Refused):  # no hold was made: nothing to give back
                    finished[t.transfer_id] = self._finish_failed(
                        t, owner, RECORDED, _with_transfer(hold.error, t.transfer_id)
                    )
                elif isinstance(hold, Hold) and hold.state != "released":
                    crediting.append(_held(t, hold))
                else:
                    aside.append(t)
            with self.batch_span("credit", crediting):
                credits = self._call_batch(
                    crediting, owner, lambda ts: self.payout.credit_many(self._credit_orders(ts))
                )
            self.failpoint("after_credit")
            make_way()
            capturing: list[TransferRecord] = []
            for t, credit in credits:
                if credit is None:
                    capturing.append(t)
                elif isinstance(credit, Refused) and credit.error.reason in _NOT_CREDITED:
                    aside.append(self._start_failing(t, owner, RECORDED, _not_credited(credit.error, t)))
                else:
                    aside.append(t)
            with self.batch_span("capture", capturing):
                captures = self._call_batch(
                    capturing,
                    owner,
                    lambda ts: self.wallet.capture_many(
                        [CaptureOrder(step_request_id(t.transfer_id, "capture"), t.transfer_id) for t in ts]
                    ),
                )
            self.failpoint("after_capture")
            completing: list[TransferRecord] = []
            for t, capture in captures:
                (completing if _captured(capture) else aside).append(t)
            finished.update({t.transfer_id: t for t in self._complete_many(completing, owner, RECORDED)})
        except _Postponed as why:  # a batch call got no answer: every gift still in the batch waits
            set_aside = {t.transfer_id for t in aside}
            for t in recorded:
                if t.transfer_id not in finished and t.transfer_id not in set_aside:
                    finished[t.transfer_id] = self._postpone(self._load(t.transfer_id), owner, str(why))
        for t in aside:
            finished[t.transfer_id] = self._drive_from(t, owner, self.policy.step_attempts)
        return [finished[t.transfer_id] if t.transfer_id in finished else self._load(t.transfer_id) for t in recorded]

    def _hold_orders(self, ts: Sequence[TransferRecord]) -> list[HoldOrder]:
        ttl = self.policy.hold_ttl_seconds
        return [
            HoldOrder(step_request_id(t.transfer_id, "hold"), t.transfer_id, t.sender_id, t.total_coins, ttl)
            for t in ts
        ]

    def _credit_orders(self, ts: Sequence[TransferRecord]) -> list[CreditOrder]:
        """The credit of each gift (held: its promotional coins known); with its deadline, except for a
        gift an earlier version decided to credit without one (asked again exactly as it was asked)."""
        return [
            CreditOrder(
                step_request_id(t.transfer_id, "credit"),
                t.transfer_id,
                t.recipient_id,
                t.total_diamonds,
                t.total_coins,
                t.promotional_coins or 0,
                None if t.step in (CREDITING, CREDITED) else self._credit_deadline(t),
            )
            for t in ts
        ]

    def _call_batch(
        self,
        ts: list[TransferRecord],
        owner: str,
        call: Callable[[list[TransferRecord]], Sequence[T]],
        attempts: int | None = None,
    ) -> list[tuple[TransferRecord, T]]:
        """One call for the gifts `ts` (a batch call, or a peer call for one gift), each gift with its
        answer. Asked again (the same request ids) while the call gets no answer, for the gifts whose
        lease `owner` still holds (the write that led here extended it; each retry extends it again);
        those it lost are left out. _Postponed once the attempts are spent."""
        delay = self.policy.retry_backoff_seconds
        attempts = attempts or self.policy.step_attempts
        last: StepUncertain | None = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                ts = self._renew(ts, owner)
            if not ts:
                return []
            try:
                return list(zip(ts, call(ts), strict=True))
            except StepUncertain as error:
                last = error
                steps = sorted({t.step for t in ts})
                log.warning("%d gift(s) at %s: %s (attempt %d of %d)", len(ts), steps, error, attempt, attempts)
            if attempt < attempts:
                self.sleep(delay)
                delay *= 2
        raise _Postponed(str(last))

    def _renew(self, ts: list[TransferRecord], owner: str) -> list[TransferRecord]:
        now = self.clock.now()
        until = now + timedelta(seconds=self.policy.lease_seconds)
        ids = [t.transfer_id for t in ts]
        kept = self._read(lambda uow: uow.transfers.renew(ids, owner, now, until))
        return [t for t in ts if t.transfer_id in kept]

    @contextmanager
    def batch_span(self, step: str, gifts: Sequence[TransferRecord | SendAsk]) -> Iterator[None]:
        """A batch step's span, in the first gift's trace, linked to the traces of the others."""
        if not gifts:
            yield
            return
        parent = propagate.extract(json.loads(gifts[0].trace_context or "{}"))
        attributes: dict[str, str | int] = {"giftcoin.step": step, "giftcoin.gifts": len(gifts)}
        if isinstance(gifts[0], TransferRecord):
            attributes["giftcoin.gift_id"] = gifts[0].transfer_id
        with self.tracer.start_as_current_span(f"gifting.saga.{step}", context=parent, attributes=attributes) as span:
            if span.is_recording():  # links cost a parse per gift: only when spans are kept
                for gift in gifts[1:]:
                    linked = trace.get_current_span(propagate.extract(json.loads(gift.trace_context or "{}")))
                    link = {"giftcoin.gift_id": gift.transfer_id} if isinstance(gift, TransferRecord) else None
                    span.add_link(linked.get_span_context(), link)
            yield

    @staticmethod
    def failure(t: TransferRecord) -> DomainError:
        """The error a failed send ends with (the same on every replay)."""
        assert t.failure_error is not None
        return DomainError.from_json(t.failure_error)

    def recover_once(self) -> int:
        """Drive every unfinished gift no one is driving to COMPLETED or FAILED; returns how many ended.

        Each is taken with a lease first, so replicas running this at once never drive one gift together.
        A gift whose peer still does not answer is put back with a growing delay.
        """
        ids = self._read(lambda uow: uow.transfers.unfinished(self.clock.now(), self.policy.recovery_batch))
        finished = 0
        for transfer_id in ids:
            owner = new_lease_owner()
            if not self._claim(transfer_id, owner, take_idle=False):
                continue  # another replica took it
            t = self._load(transfer_id)
            # Continue the gift's own trace, whatever process recorded it.
            parent = propagate.extract(json.loads(t.trace_context or "{}"))
            with self.tracer.start_as_current_span(
                "gifting.recover", context=parent, attributes={"giftcoin.gift_id": transfer_id, "giftcoin.step": t.step}
            ):
                try:
                    t = self._drive(transfer_id, owner, attempts=1)
                except Exception:  # one gift's trouble (a database error...) must not hold up the others
                    log.exception("gift %s: recovery failed; it is retried once its lease passes", transfer_id)
                    continue
            finished += t.state != PENDING
        return finished

    # --- the saga ----------------------------------------------------------------------------------

    def _claim(self, transfer_id: str, owner: str, take_idle: bool) -> bool:
        now = self.clock.now()
        until = now + timedelta(seconds=self.policy.lease_seconds)
        return self._read(lambda uow: uow.transfers.claim(transfer_id, owner, now, until, take_idle))

    def _load(self, transfer_id: str) -> TransferRecord:
        t = self._read(lambda uow: uow.transfers.get(transfer_id))
        if t is None:
            raise RuntimeError(f"transfer {transfer_id} vanished")
        return t

    def _drive(self, transfer_id: str, owner: str, attempts: int) -> TransferRecord:
        return self._drive_from(self._load(transfer_id), owner, attempts)

    def _drive_from(self, t: TransferRecord, owner: str, attempts: int) -> TransferRecord:
        transfer_id = t.transfer_id
        try:
            while t.state == PENDING:
                t = self._step(t, owner, attempts)
        except _Postponed as why:
            t = self._postpone(t, owner, str(why))
        except _LeaseLost:
            t = self._load(transfer_id)
        return t

    def _step(self, t: TransferRecord, owner: str, attempts: int) -> TransferRecord:
        if t.step in (RECORDED, HELD):
            return self._hold(t, owner, attempts)
        if t.step == CREDITING:  # an earlier version's decision to credit: its credit, asked again
            return self._credit(t, owner, attempts)
        if t.step == CREDITED:
            return self._capture(t, owner, attempts)
        if t.step == FAILING:
            return self._release(t, owner, attempts)
        raise AssertionError(f"pending transfer {t.transfer_id} at step {t.step}")

    def _hold(self, t: TransferRecord, owner: str, attempts: int) -> TransferRecord:
        """Hold the gift's coins (a replay, if they were held before), then credit it."""
        with self._span("hold", t):
            try:
                (order,) = self._hold_orders([t])
                hold = self._call(t, owner, attempts, lambda: self.wallet.hold_coins(order))
            except Refused as refusal:  # no hold was made: nothing to give back
                return self._finish_failed(t, owner, t.step, _with_transfer(refusal.error, t.transfer_id))
            self.failpoint("after_hold")
        if hold.state == "released":  # given back already: this gift cannot be credited any more
            return self._start_failing(t, owner, t.step, _gift_failed(t, "HOLD_LAPSED", "its hold was released"))
        return self._credit(_held(t, hold), owner, attempts)

    def _deadline_from(self, recorded_at: datetime) -> datetime:
        """The credit deadline of a gift recorded at `recorded_at`: a hold made once it was recorded
        outlives it by the safety margin."""
        return recorded_at + timedelta(seconds=self.policy.hold_ttl_seconds - self.policy.hold_safety_margin_seconds)

    def _credit_deadline(self, t: TransferRecord) -> datetime:
        """The gift's credit deadline as recorded with it (for rows of earlier versions: from the policy)."""
        return t.credit_deadline or self._deadline_from(t.created_at)

    def _credit(self, t: TransferRecord, owner: str, attempts: int) -> TransferRecord:
        """Credit the gift's diamonds (a replay, if credited before), then capture its coins."""
        with self._span("credit", t):
            try:
                (order,) = self._credit_orders([t])
                self._call(t, owner, attempts, lambda: self.payout.credit_diamonds(order))
            except Refused as refusal:
                if refusal.error.reason in _NOT_CREDITED:
                    return self._start_failing(t, owner, t.step, _not_credited(refusal.error, t))
                log.error("gift %s: payout refused the credit unexpectedly: %s", t.transfer_id, refusal)
                raise _Postponed(str(refusal)) from refusal
            self.failpoint("after_credit")
        return self._capture(t, owner, attempts)

    def _capture(self, t: TransferRecord, owner: str, attempts: int) -> TransferRecord:
        order = CaptureOrder(step_request_id(t.transfer_id, "capture"), t.transfer_id)
        with self._span("capture", t):
            capture: Hold | Refused
            try:
                capture = self._call(t, owner, attempts, lambda: self.wallet.capture_hold(order))
            except Refused as refusal:
                capture = refusal
            if not _captured(capture):
                # Diamonds were credited: this gift may only complete. Keep trying, loudly.
                log.error("gift %s: wallet refused to capture a credited gift: %s", t.transfer_id, capture)
                raise _Postponed(str(capture))
            self.failpoint("after_capture")
        return self._complete(t, owner)

    def _release(self, t: TransferRecord, owner: str, attempts: int) -> TransferRecord:
        with self._span("release", t):
            try:
                self._call(
                    t,
                    owner,
                    attempts,
                    lambda: self.wallet.release_hold(
                        request_id=step_request_id(t.transfer_id, "release"), gift_id=t.transfer_id
                    ),
                )
            except Refused as refusal:
                if refusal.error.reason not in _NOTHING_HELD:
                    log.error("gift %s: wallet refused to release its hold: %s", t.transfer_id, refusal)
                    raise _Postponed(str(refusal)) from refusal
            self.failpoint("after_release")
            return self._finish_failed(t, owner, FAILING, self.failure(t))

    def _call(self, t: TransferRecord, owner: str, attempts: int, call: Callable[[], T]) -> T:
        """One peer call for one gift: `_call_batch` of one; _LeaseLost if another replica took it over."""
        answered = self._call_batch([t], owner, lambda _: [call()], attempts)
        if not answered:
            raise _LeaseLost()
        return answered[0][1]

    def _advance(self, t: TransferRecord, owner: str, from_step: str, **values: Any) -> TransferRecord:
        """Write the next step, extending the lease for it; _LeaseLost if another replica has the gift."""
        now = self.clock.now()
        values["updated_at"] = now
        values["lease_until"] = now + timedelta(seconds=self.policy.lease_seconds)
        if not self._read(lambda uow: uow.transfers.advance(t.transfer_id, owner, from_step, **values)):
            raise _LeaseLost()
        return revised(t, **values)

    def _start_failing(self, t: TransferRecord, owner: str, from_step: str, error: DomainError) -> TransferRecord:
        return self._advance(
            t, owner, from_step, step=FAILING, failure_reason=error.reason, failure_error=error.to_json()
        )

    def _finish_failed(self, t: TransferRecord, owner: str, from_step: str, error: DomainError) -> TransferRecord:
        """FAILED, and the coins counted against the daily limit given back, in one transaction."""
        now = self.clock.now()
        values: dict[str, Any] = {
            "state": FAILED,
            "step": FAILED,
            "failure_reason": error.reason,
            "failure_error": error.to_json(),
            "lease_owner": "",
            "lease_until": None,
            "updated_at": now,
        }

        def fail(uow: UnitOfWork) -> bool:
            if not uow.transfers.advance(t.transfer_id, owner, from_step, **values):
                return False
            uow.spending.give_back(t.sender_id, t.spend_day, t.total_coins)
            return True

        if not self._read(fail):
            raise _LeaseLost()
        OUTCOMES.add(1, {"kind": "gift", "state": "failed", "reason": error.reason})
        log.info("gift %s failed: %s", t.transfer_id, error.reason)
        return revised(t, **values)

    def _complete(self, t: TransferRecord, owner: str) -> TransferRecord:
        (done,) = self._complete_many([t], owner, t.step)
        if done.state != COMPLETED:
            raise _LeaseLost()
        return done

    def _complete_many(self, ts: list[TransferRecord], owner: str, from_step: str) -> list[TransferRecord]:
        """COMPLETED and their live-feed events, in one transaction (the outbox); each transfer as it
        now stands (one whose lease was lost is read back as the replica that took it left it)."""
        if not ts:
            return []
        now = self.clock.now()
        values: dict[str, Any] = {
            "state": COMPLETED,
            "step": COMPLETED,
            "completed_at": now,
            "lease_owner": "",
            "lease_until": None,
            "updated_at": now,
        }

        def complete(uow: UnitOfWork) -> set[str]:
            # With what the hold said (kept for the record: payout's credit was asked with them).
            rows = [
                {
                    "transfer_id": t.transfer_id,
                    "promotional_coins": t.promotional_coins,
                    "hold_expire_at": t.hold_expire_at,
                }
                for t in ts
            ]
            counts = Counter(Target(t.target_kind, t.target_id).key for t in ts)
            advancing = uow.transfers.advance_many(owner, from_step, rows, **values)
            numbering = uow.feed.number(counts)  # for every gift: another replica taking one over is rare
            advanced, numbers = advancing.get(), numbering.get()  # one round trip
            lost = Counter(Target(t.target_kind, t.target_id).key for t in ts if t.transfer_id not in advanced)
            if lost:  # their events are not this transaction's to write: give their numbers back
                uow.feed.renumber({key: numbers[key].first + counts[key] - lost[key] - 1 for key in lost})
            events = [(Target(t.target_kind, t.target_id).key, t) for t in ts if t.transfer_id in advanced]
            uow.feed.append(events, numbers, now)
            return advanced

        with self.batch_span("complete", ts):
            advanced = self._read(complete)
        results = [revised(t, **values) if t.transfer_id in advanced else self._load(t.transfer_id) for t in ts]
        done = [t for t in ts if t.transfer_id in advanced]
        if done:  # counted once per batch: an instrument's add costs about as much whatever it adds
            OUTCOMES.add(len(done), {"kind": "gift", "state": "completed", "reason": ""})
            VALUE_MOVED.add(sum(t.total_coins for t in done), {"unit": "coin", "kind": "gift"})
            VALUE_MOVED.add(sum(t.total_diamonds for t in done), {"unit": "diamond", "kind": "gift"})
        for target_key in sorted({Target(t.target_kind, t.target_id).key for t in ts if t.transfer_id in advanced}):
            self.on_completed(target_key)
        return results

    def _postpone(self, t: TransferRecord, owner: str, why: str) -> TransferRecord:
        """Leave the gift for recovery, not before a delay that doubles with each postponement."""
        now = self.clock.now()
        delay = min(self.policy.retry_max_seconds, self.policy.retry_base_seconds * 2 ** min(t.attempts, 20))
        not_before = now + timedelta(seconds=delay)
        self._read(lambda uow: uow.transfers.postpone(t.transfer_id, owner, now, not_before))
        log.warning("gift %s postponed at step %s for %.1fs: %s", t.transfer_id, t.step, delay, why)
        return self._load(t.transfer_id)

    def _span(self, step: str, t: TransferRecord) -> Any:
        """A span per saga step, named for it and carrying the gift's id."""
        return self.tracer.start_as_current_span(
            f"gifting.saga.{step}", attributes={"giftcoin.gift_id": t.transfer_id, "giftcoin.step": t.step}
        )

    # --- reads ---------------------------------------------------------------------------------------

    def get_transfer(self, caller_id: str, transfer_id: str) -> TransferRecord:
        """One transfer, for its sender or recipient only.

        Anyone else gets PERMISSION_DENIED whether or not it exists (checked before NOT_FOUND, AIP-211),
        so transfer ids reveal nothing to third parties.
        """
        t = self._read(lambda uow: uow.transfers.get(transfer_id))
        if t is None or caller_id not in (t.sender_id, t.recipient_id):
            raise permission_denied(
                f"user:{caller_id} is neither the sender nor the recipient of gift {transfer_id}",
                transfer_id=transfer_id,
            )
        return t

    def list_sent(self, sender_id: str, page_size: int, page_token: str) -> Page:
        """Every gift the user sent (pending, completed or failed), newest first."""
        before = _decode_cursor(page_token, "sent")
        rows = self._read(lambda uow: uow.transfers.page("sender_id", sender_id, page_size + 1, before))
        return _page(rows, page_size, "sent")

    def list_received(self, recipient_id: str, page_size: int, page_token: str) -> Page:
        """The gifts the user received: completed ones only (a pending or failed gift gave them nothing)."""
        before = _decode_cursor(page_token, "received")
        rows = self._read(
            lambda uow: uow.transfers.page("recipient_id", recipient_id, page_size + 1, before, COMPLETED)
        )
        return _page(rows, page_size, "received")

    def leaderboard(
        self, window: str, limit: int, target: Target | None = None, creator_id: str | None = None
    ) -> list[LeaderboardEntry]:
        """Top gifters by coins spent on completed gifts, over the target or the creator, in the window."""
        since = _day_start(self.clock.now()) if window == "day" else None
        where = (target.kind, target.id) if target is not None else None
        rows = self._read(lambda uow: uow.transfers.leaders(limit, where, creator_id, since))
        return [LeaderboardEntry(rank, r.user_id, r.coins, r.gifts) for rank, r in enumerate(rows, start=1)]

    # --- live feed -------------------------------------------------------------------------------------

    def feed_head(self, target: Target) -> int:
        """The sequence of the target's latest event (0 if none)."""
        return self._read(lambda uow: uow.feed.head(target.key))

    def feed_heads(self, target_keys: list[str]) -> dict[str, int]:
        return self._read(lambda uow: uow.feed.heads(target_keys))

    def feed_after(self, target: Target, after_sequence: int, limit: int = 100) -> list[FeedEventRecord]:
        return self._read(lambda uow: uow.feed.after(target.key, after_sequence, limit))


def current_trace_context() -> str:
    """The current W3C trace context (traceparent, tracestate) as JSON, for recovery to continue."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=otel_context.get_current())
    return json.dumps(carrier, sort_keys=True)


def _decode_cursor(page_token: str, listing: str) -> tuple[datetime, str] | None:
    """The (created_at, transfer_id) a page starts after; INVALID_ARGUMENT for a token of another list."""
    cursor = decode_page_token(page_token, listing, {"at": CursorValue.INSTANT, "id": CursorValue.ID})
    return None if cursor is None else (cursor["at"], cursor["id"])


def _page(rows: list[TransferRecord], page_size: int, listing: str) -> Page:
    """One page from page_size + 1 rows: the extra row only says whether there is a next page."""
    token = ""
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        token = encode_page_token(listing, {"at": last.created_at, "id": last.transfer_id})
    return Page(rows, token)
