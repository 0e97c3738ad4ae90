"""Gifting's rules: the catalogue, recording sends, histories, leaderboards and the live feed's reads,
and the errors a gift ends with.

Plain Python over the unit of work (services/gifting/storage.py): no protobuf, no gRPC, no database
of its own. The send saga, which moves a recorded gift's value through wallet and payout, is
services/gifting/saga.py; a SendGift batch, from the record to the answers, services/gifting/sends.py.

Sends that arrive together are recorded together (`read_sends`, `record_sends`: the SendGift
batcher): one transaction records them all, each refused or recorded as if recorded one after
another; the saga then drives the recorded ones together.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from services.gifting.model import (
    ACTIVE,
    COMPLETED,
    DEFAULT_CATALOGUE,
    PENDING,
    RECORDED,
    RETIRED,
    FeedEventRecord,
    Gift,
    GiftRecord,
    LeaderboardEntry,
    Page,
    SagaPolicy,
    SendAsk,
    Target,
    TransferRecord,
    creator_diamonds,
    credit_deadline,
)
from services.gifting.storage import UnitOfWork as UnitOfWork
from services.runtime.clock import Clock
from services.runtime.errors import (
    DomainError,
    aborted,
    already_exists,
    bad_field,
    failed_precondition,
    not_found,
    permission_denied,
    resource_exhausted,
    unavailable,
)
from services.runtime.guarded import Transactions
from services.runtime.pagination import CursorValue, Listing, decode_page_token, encode_page_token

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendReads:
    """What recording sends reads (`Gifts.read_sends`), queued in the transaction's pipeline: each is
    read (one round trip, with whatever else is queued) when first called."""

    now: datetime  # the sends are recorded at, and count against the day of
    gifts: Callable[[], dict[str, GiftRecord]]
    recorded: Callable[[], dict[tuple[str, str], TransferRecord]]  # by (sender, request id)
    spent: Callable[[], dict[tuple[str, date], int]]  # the senders' day totals, locked


# --- errors ----------------------------------------------------------------------------------------


def _self_gift(recipient_id: str) -> DomainError:
    return bad_field(
        "SELF_GIFT",
        "recipient_id",
        "a gift cannot be sent to oneself",
        "must not be the sender",
        recipient_id=recipient_id,
    )


def _request_id_reused(request_id: str) -> DomainError:
    return already_exists(
        "REQUEST_ID_REUSED", f"request id {request_id} was already used for a different gift", request_id=request_id
    )


def _over_daily_limit(t: TransferRecord, limit: int, spent: int, day: date) -> DomainError:
    return resource_exhausted(
        "DAILY_SPENDING_LIMIT_EXCEEDED",
        f"sending {t.total_coins} coins would pass the daily limit of {limit} (spent today: {spent})",
        limit=limit,
        spent=spent,
        coins=t.total_coins,
        day=day.isoformat(),
    )


def not_recorded(request_id: str) -> DomainError:
    return unavailable(
        "DEPENDENCY_UNAVAILABLE",
        f"request {request_id} could not be recorded now; retry with the same request id",
        request_id=request_id,
    )


# --- how a gift ends ------------------------------------------------------------------------------


def with_transfer(error: DomainError, transfer_id: str) -> DomainError:
    """A peer's refusal, passed through with its code and reason, naming the gift it failed."""
    return DomainError(error.code, error.reason, error.message, {**error.metadata, "transfer_id": transfer_id})


def cannot_receive(refusal: DomainError, t: TransferRecord) -> DomainError:
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


def gift_failed(t: TransferRecord, cause: str, why: str) -> DomainError:
    return failed_precondition(
        "GIFT_FAILED", f"gift {t.transfer_id} failed: {why}; nothing was spent", transfer_id=t.transfer_id, cause=cause
    )


def not_credited(refusal: DomainError, t: TransferRecord) -> DomainError:
    """What a gift fails with when payout says for certain that it credited nothing."""
    if refusal.reason == "CREDIT_DEADLINE_PASSED":
        return gift_failed(t, "EXPIRED", "it waited too long")
    return cannot_receive(refusal, t)


def failure(t: TransferRecord) -> DomainError:
    """The error a failed send ends with (the same on every replay)."""
    assert t.failure_error is not None
    return DomainError.from_json(t.failure_error)


def unread(transfer_id: str) -> DomainError:
    return unavailable(
        "DEPENDENCY_UNAVAILABLE",
        f"gift {transfer_id} could not be read now; retry with the same request id",
        transfer_id=transfer_id,
    )


def in_flight(transfer_id: str) -> DomainError:
    return aborted(
        "REQUEST_IN_FLIGHT",
        f"gift {transfer_id} is being sent; retry with the same request id",
        transfer_id=transfer_id,
    )


def _day_start(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def _utc_day(now: datetime) -> date:
    return now.astimezone(UTC).date()


# --- the service ------------------------------------------------------------------------------------


class Gifts:
    """The gifts: the catalogue, the sends recorded, and their reads.

    Methods that work in the caller's transaction take its unit of work first (the servicer's guarded
    calls); the ones the live feed, start-up and the metrics call run a transaction of their own.
    """

    def __init__(self, transactions: Transactions[UnitOfWork], clock: Clock, policy: SagaPolicy) -> None:
        self.transactions = transactions
        self.clock = clock
        self.policy = policy

    # --- catalogue -----------------------------------------------------------------------------

    def seed_catalogue(self) -> int:
        """Add the default gifts that do not exist yet (at start; replicas may race); returns how many."""
        now = self.clock.now()

        def seed(uow: UnitOfWork) -> int:
            return sum(
                uow.catalogue.add_if_missing(gift_id, name, price, None, self.policy.share_bps, now)
                for gift_id, name, price in DEFAULT_CATALOGUE
            )

        return self.transactions.run(seed)

    def list_gifts(self, uow: UnitOfWork) -> list[Gift]:
        return [self._gift(r) for r in uow.catalogue.active()]

    def upsert_gift(self, uow: UnitOfWork, gift_id: str, name: str, coin_price: int, diamonds: int) -> Gift:
        """Create a gift, or change it: a new price or diamond amount is a new version; it is (back) on sale.

        `diamonds` 0 means the default share, fixed into the version at the share configured now.
        """
        now = self.clock.now()
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

    def retire_gift(self, uow: UnitOfWork, gift_id: str) -> Gift:
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

    def read_sends(self, uow: UnitOfWork, asks: Sequence[SendAsk]) -> SendReads:
        """What recording these sends reads, queued in the transaction's pipeline (one round trip, with
        whatever else is queued): the gifts, the sends recorded before under their request ids, and the
        senders' day totals (locked), for the day of now."""
        now = self.clock.now()
        day = _utc_day(now)
        return SendReads(
            now,
            uow.catalogue.get_many(a.send.gift_id for a in asks),
            uow.transfers.by_requests((a.sender_id, a.request_id) for a in asks),
            uow.spending.lock((a.sender_id, day) for a in asks if a.send.recipient_id != a.sender_id),
        )

    def record_sends(
        self, uow: UnitOfWork, asks: Sequence[SendAsk], lease_owner: str, reads: SendReads | None = None
    ) -> list[TransferRecord | DomainError]:
        """The saga's first step for many sends, in the caller's transaction: each refused, or recorded
        as pending; in order, as if recorded one after another (one sender's sends count against the
        daily limit in turn). Nothing is written for a refused send.

        New transfers are leased to `lease_owner`, who drives them next (sends.py). A send
        already recorded under its request id is returned as it stands (after the request-id store
        has forgotten the id, the unique (sender, request id) constraint still holds: a concurrent
        one fails this transaction, which is then decided again). Statements, sent in the
        transaction's pipeline: `read_sends` (queued already when given: for these sends or more);
        the day totals and the transfers written with the commit.
        """
        reads = reads or self.read_sends(uow, asks)
        now, day, limit = reads.now, _utc_day(reads.now), self.policy.daily_spend_limit_coins
        gifts, before, spent = reads.gifts(), reads.recorded(), reads.spent()
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

    def get_transfer(self, uow: UnitOfWork, caller_id: str, transfer_id: str) -> TransferRecord:
        """One transfer, for its sender or recipient only.

        Anyone else gets PERMISSION_DENIED whether or not it exists (checked before NOT_FOUND, AIP-211),
        so transfer ids reveal nothing to third parties.
        """
        t = uow.transfers.get(transfer_id)
        if t is None or caller_id not in (t.sender_id, t.recipient_id):
            raise permission_denied(
                f"user:{caller_id} is neither the sender nor the recipient of gift {transfer_id}",
                transfer_id=transfer_id,
            )
        return t

    def list_sent(self, uow: UnitOfWork, sender_id: str, page_size: int, page_token: str) -> Page:
        """Every gift the user sent (pending, completed or failed), newest first."""
        before = _decode_cursor(page_token, "sent")
        rows = uow.transfers.page("sender_id", sender_id, page_size + 1, before)
        return _page(rows, page_size, "sent")

    def list_received(self, uow: UnitOfWork, recipient_id: str, page_size: int, page_token: str) -> Page:
        """The gifts the user received: completed ones only (a pending or failed gift gave them nothing)."""
        before = _decode_cursor(page_token, "received")
        rows = uow.transfers.page("recipient_id", recipient_id, page_size + 1, before, COMPLETED)
        return _page(rows, page_size, "received")

    def transfers(
        self, uow: UnitOfWork, states: Sequence[str], steps: Sequence[str], listing: Listing
    ) -> tuple[list[TransferRecord], bool]:
        """Any gifts (operators, the reconciler) in (create time, id) order, in these states and at these
        steps (any, when empty), a page of the listing; and whether more follow."""
        rows = uow.transfers.matching(states, steps, listing.selection, listing.size + 1)
        return rows[: listing.size], len(rows) > listing.size

    def leaderboard(
        self, uow: UnitOfWork, window: str, limit: int, target: Target | None = None, creator_id: str | None = None
    ) -> list[LeaderboardEntry]:
        """Top gifters by coins spent on completed gifts, over the target or the creator, in the window."""
        since = _day_start(self.clock.now()) if window == "day" else None
        where = (target.kind, target.id) if target is not None else None
        rows = uow.transfers.leaders(limit, where, creator_id, since)
        return [LeaderboardEntry(rank, r.user_id, r.coins, r.gifts) for rank, r in enumerate(rows, start=1)]

    # --- live feed -------------------------------------------------------------------------------------

    def feed_head(self, target: Target) -> int:
        """The sequence of the target's latest event (0 if none)."""
        return self.transactions.run(lambda uow: uow.feed.head(target.key))

    def unfinished(self) -> tuple[int, float]:
        """(gifts still pending, seconds since the oldest of them was recorded; 0 when none)."""
        count, oldest = self.transactions.run(lambda uow: uow.transfers.unfinished_summary())
        age = 0.0 if oldest is None else max(0.0, (self.clock.now() - oldest).total_seconds())
        return count, age

    def feed_heads(self, target_keys: list[str]) -> dict[str, int]:
        return self.transactions.run(lambda uow: uow.feed.heads(target_keys))

    def feed_after(self, target: Target, after_sequence: int, limit: int = 100) -> list[FeedEventRecord]:
        return self.transactions.run(lambda uow: uow.feed.after(target.key, after_sequence, limit))


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
