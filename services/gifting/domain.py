"""Gifting's rules: the catalogue, recording sends, histories, leaderboards and the live feed's reads.

Plain Python: no protobuf, no gRPC calls (grpc.StatusCode only names the codes of errors). The send
saga, which moves a recorded gift's value through wallet and payout, is services/gifting/saga.py.

Sends that arrive together are recorded together (`read_sends`, `record_sends`: the SendGift
batcher): one transaction records them all, each refused or recorded as if recorded one after
another; the saga then drives the recorded ones together.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate
from sqlalchemy import Connection

from services.gifting.storage import (
    ACTIVE,
    COMPLETED,
    PENDING,
    RECORDED,
    RETIRED,
    FeedEventRecord,
    GiftRecord,
    TransferQuery,
    TransferRecord,
    UnitOfWork,
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

log = logging.getLogger(__name__)
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
class Page:
    transfers: list[TransferRecord]
    next_page_token: str


@dataclass(frozen=True)
class LeaderboardEntry:
    rank: int
    user_id: str
    coins: int
    gifts: int


# --- policy --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SagaPolicy:
    share_bps: int = 5000
    daily_spend_limit_coins: int = 100_000
    hold_ttl_seconds: int = 300
    hold_safety_margin_seconds: int = 60
    step_deadline_seconds: float = 5.0  # the longest a gift waits on one step of a peer, retries included
    retry_backoff_seconds: float = 0.1  # between the calls of one step that got no answer
    lease_seconds: int = 30
    retry_base_seconds: float = 1.0  # recovery's wait before retrying a postponed gift, doubling
    retry_max_seconds: float = 60.0
    recovery_batch: int = 50


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


def _over_daily_limit(t: TransferRecord, limit: int, spent: int, day: date) -> DomainError:
    return DomainError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "DAILY_SPENDING_LIMIT_EXCEEDED",
        f"sending {t.total_coins} coins would pass the daily limit of {limit} (spent today: {spent})",
        {"limit": str(limit), "spent": str(spent), "coins": str(t.total_coins), "day": day.isoformat()},
    )


def credit_deadline(recorded_at: datetime, policy: SagaPolicy) -> datetime:
    """The credit deadline of a gift recorded at `recorded_at`: a hold made once it was recorded
    outlives it by the safety margin (services/gifting/saga.py: the expiring hold)."""
    return recorded_at + timedelta(seconds=policy.hold_ttl_seconds - policy.hold_safety_margin_seconds)


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
        policy: SagaPolicy,
    ) -> None:
        self.db = db
        self.clock = clock
        self.policy = policy

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
            credit_deadline=credit_deadline(now, self.policy),
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

    def transfers(self, query: TransferQuery, page_size: int) -> tuple[list[TransferRecord], bool]:
        """Any gifts (operators, the reconciler) in (create time, id) order; and whether more follow."""
        rows = self._read(lambda uow: uow.transfers.matching(query, page_size + 1))
        return rows[:page_size], len(rows) > page_size

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

    def unfinished(self) -> tuple[int, float]:
        """(gifts still pending, seconds since the oldest of them was recorded; 0 when none)."""
        count, oldest = self._read(lambda uow: uow.transfers.unfinished_summary())
        age = 0.0 if oldest is None else max(0.0, (self.clock.now() - oldest).total_seconds())
        return count, age

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
