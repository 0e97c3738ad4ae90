"""What the reconciler reads of each service's books, through the services' RPCs only.

Each service owns its database; the reconciler reads none of them. `RpcBooks` pages through the
reconciler RPCs (wallet ListHolds and SummarizeBooks, gifting ListGiftTransfers, payout
ListDiamondCredits and SummarizeBooks) as `service:reconciler` (or an operator) and turns their
messages into the plain records below, which `reconcile.py` checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import grpc
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc
from giftcoin.payout.v1 import payout_pb2, payout_pb2_grpc
from giftcoin.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from google.protobuf import timestamp_pb2

from services.runtime.clients import open_channel
from services.runtime.config import TlsSettings
from services.runtime.timestamps import from_timestamp, to_timestamp

PAGE_SIZE = 500  # the services' largest page
MAX_IDS = 500  # ids asked for at once
SUMMARY_DAYS = 31  # the longest window a SummarizeBooks call covers
DEADLINE_SECONDS = 30.0

T = TypeVar("T")


class ReadFailed(Exception):
    """A service's books could not be read: it did not answer, or refused (its error in `error`)."""

    def __init__(self, service: str, error: grpc.RpcError) -> None:
        super().__init__(f"{service}: {error}")
        self.service = service
        self.error = error


@dataclass(frozen=True)
class Window:
    """[start, end): the records made in it."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class Gift:
    gift_id: str
    sender_id: str
    recipient_id: str
    state: str  # pending | completed | failed
    step: str  # recorded | held | crediting | credited | failing | completed | failed
    total_coins: int
    total_diamonds: int
    cause: str  # why it failed (or is failing)
    created_at: datetime


@dataclass(frozen=True)
class Hold:
    hold_id: str
    gift_id: str
    user_id: str
    state: str  # held | captured | released | expired
    amount: int
    promotional_amount: int
    spent: int  # what the ledger's capture transfers of the gift spent
    spent_promotional: int
    capture_transfers: int
    created_at: datetime


@dataclass(frozen=True)
class Credit:
    credit_id: str
    gift_id: str
    creator_id: str
    diamonds: int
    coins: int
    booked_diamonds: int  # what the ledger's transfers of the gift credited
    booked_share: int  # the platform's share they booked
    diamond_transfers: int
    created_at: datetime


@dataclass(frozen=True)
class Takings:
    store: str
    currency: str
    purchases: int
    amount_minor: int
    coins: int


@dataclass(frozen=True)
class Refunds:
    kind: str  # refund | chargeback
    currency: str
    refunds: int
    amount_minor: int
    coins_reclaimed: int
    debt_added: int


@dataclass(frozen=True)
class Reversals:
    currency: str
    reversals: int
    amount_minor: int
    coins: int


@dataclass(frozen=True)
class PayoutTotals:
    state: str  # requested | processing | paid | failed
    currency: str
    payouts: int
    diamonds: int
    gross_minor: int
    fee_minor: int
    net_minor: int


@dataclass
class WalletBooks:
    """Wallet's SummarizeBooks over a window: flows in it, and its coins outstanding as of `as_of`."""

    takings: list[Takings] = field(default_factory=list)
    refunds: list[Refunds] = field(default_factory=list)
    reversals: list[Reversals] = field(default_factory=list)
    coins_purchased: int = 0
    coins_granted: int = 0
    coins_outstanding: int = 0
    coins_outstanding_promotional: int = 0
    coins_held: int = 0
    promotion_budgets_remaining: int = 0


@dataclass
class PayoutBooks:
    """Payout's SummarizeBooks over a window: payouts requested in it, and its diamonds outstanding."""

    payouts: list[PayoutTotals] = field(default_factory=list)
    diamonds_outstanding: int = 0
    diamonds_in_payout: int = 0


class Books(Protocol):
    """The three services' books, as the reconciler reads them."""

    def gifts(self, window: Window) -> Iterator[Gift]: ...

    def gifts_by_id(self, gift_ids: Sequence[str]) -> list[Gift]: ...

    def holds(self, window: Window) -> Iterator[Hold]: ...

    def holds_by_gift(self, gift_ids: Sequence[str]) -> list[Hold]: ...

    def credits(self, window: Window) -> Iterator[Credit]: ...

    def credits_by_gift(self, gift_ids: Sequence[str]) -> list[Credit]: ...

    def wallet_books(self, window: Window) -> WalletBooks: ...

    def payout_books(self, window: Window) -> PayoutBooks: ...


_GIFT_STATES = {
    gifting_pb2.GIFT_TRANSFER_STATE_PENDING: "pending",
    gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED: "completed",
    gifting_pb2.GIFT_TRANSFER_STATE_FAILED: "failed",
}
_STEPS = {
    gifting_pb2.GIFT_TRANSFER_STEP_RECORDED: "recorded",
    gifting_pb2.GIFT_TRANSFER_STEP_HELD: "held",
    gifting_pb2.GIFT_TRANSFER_STEP_CREDITING: "crediting",
    gifting_pb2.GIFT_TRANSFER_STEP_CREDITED: "credited",
    gifting_pb2.GIFT_TRANSFER_STEP_FAILING: "failing",
    gifting_pb2.GIFT_TRANSFER_STEP_COMPLETED: "completed",
    gifting_pb2.GIFT_TRANSFER_STEP_FAILED: "failed",
}
_HOLD_STATES = {
    wallet_pb2.HOLD_STATE_HELD: "held",
    wallet_pb2.HOLD_STATE_CAPTURED: "captured",
    wallet_pb2.HOLD_STATE_RELEASED: "released",
    wallet_pb2.HOLD_STATE_EXPIRED: "expired",
}
_REFUND_KINDS = {wallet_pb2.REFUND_KIND_REFUND: "refund", wallet_pb2.REFUND_KIND_CHARGEBACK: "chargeback"}
_PAYOUT_STATES = {
    payout_pb2.PAYOUT_STATE_REQUESTED: "requested",
    payout_pb2.PAYOUT_STATE_PROCESSING: "processing",
    payout_pb2.PAYOUT_STATE_PAID: "paid",
    payout_pb2.PAYOUT_STATE_FAILED: "failed",
}


class RpcBooks:
    """`Books` read through the services' RPCs, one page (or 500 ids) a call."""

    def __init__(
        self,
        wallet: wallet_pb2_grpc.WalletServiceStub,
        gifting: gifting_pb2_grpc.GiftingServiceStub,
        payout: payout_pb2_grpc.PayoutServiceStub,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.wallet = wallet
        self.gifting = gifting
        self.payout = payout
        self.close = close

    @classmethod
    def connect(cls, targets: dict[str, str], token: Callable[[], str], tls: TlsSettings | None = None) -> RpcBooks:
        """Channels to the three services (`targets`: wallet, gifting, payout) sending `token()` (an
        operator's, or service:reconciler's: runtime.auth.TokenSource) as their identity."""
        channels = {
            name: open_channel(targets[name], f"giftcoin.{name}.v1.{name.capitalize()}Service", token, tls)
            for name in ("wallet", "gifting", "payout")
        }

        def close() -> None:
            for channel in channels.values():
                channel.close()

        return cls(
            wallet_pb2_grpc.WalletServiceStub(channels["wallet"]),
            gifting_pb2_grpc.GiftingServiceStub(channels["gifting"]),
            payout_pb2_grpc.PayoutServiceStub(channels["payout"]),
            close,
        )

    def __enter__(self) -> RpcBooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- gifting -----------------------------------------------------------------------------------

    def gifts(self, window: Window) -> Iterator[Gift]:
        request = gifting_pb2.ListGiftTransfersRequest(start_time=_stamp(window.start), end_time=_stamp(window.end))
        for page in _pages("gifting", self.gifting.ListGiftTransfers, request):
            yield from (_gift(r) for r in page.transfers)

    def gifts_by_id(self, gift_ids: Sequence[str]) -> list[Gift]:
        return [
            _gift(r)
            for chunk in _chunks(gift_ids)
            for page in _pages(
                "gifting", self.gifting.ListGiftTransfers, gifting_pb2.ListGiftTransfersRequest(transfer_ids=chunk)
            )
            for r in page.transfers
        ]

    # --- wallet ------------------------------------------------------------------------------------

    def holds(self, window: Window) -> Iterator[Hold]:
        request = wallet_pb2.ListHoldsRequest(start_time=_stamp(window.start), end_time=_stamp(window.end))
        for page in _pages("wallet", self.wallet.ListHolds, request):
            yield from (_hold(h) for h in page.holds)

    def holds_by_gift(self, gift_ids: Sequence[str]) -> list[Hold]:
        return [
            _hold(h)
            for chunk in _chunks(gift_ids)
            for page in _pages("wallet", self.wallet.ListHolds, wallet_pb2.ListHoldsRequest(gift_ids=chunk))
            for h in page.holds
        ]

    def wallet_books(self, window: Window) -> WalletBooks:
        books = WalletBooks()
        for part in _summary_windows(window):
            request = wallet_pb2.SummarizeBooksRequest(start_time=_stamp(part.start), end_time=_stamp(part.end))
            r = _ask("wallet", self.wallet.SummarizeBooks, request)
            books.takings += [
                Takings(t.store, t.amount.currency_code, t.purchases, t.amount.amount_minor, t.coins) for t in r.takings
            ]
            books.refunds += [
                Refunds(
                    _REFUND_KINDS[f.kind],
                    f.amount.currency_code,
                    f.refunds,
                    f.amount.amount_minor,
                    f.coins_reclaimed,
                    f.debt_added,
                )
                for f in r.refunds
            ]
            books.reversals += [
                Reversals(v.amount.currency_code, v.reversals, v.amount.amount_minor, v.coins) for v in r.reversals
            ]
            books.coins_purchased += r.coins_purchased
            books.coins_granted += r.coins_granted
            # The "now" figures: the last call's are the latest.
            books.coins_outstanding = r.coins_outstanding
            books.coins_outstanding_promotional = r.coins_outstanding_promotional
            books.coins_held = r.coins_held
            books.promotion_budgets_remaining = r.promotion_budgets_remaining
        books.takings = _merged(books.takings, lambda t: (t.store, t.currency))
        books.refunds = _merged(books.refunds, lambda f: (f.kind, f.currency))
        books.reversals = _merged(books.reversals, lambda v: (v.currency, ""))
        return books

    # --- payout ------------------------------------------------------------------------------------

    def credits(self, window: Window) -> Iterator[Credit]:
        request = payout_pb2.ListDiamondCreditsRequest(start_time=_stamp(window.start), end_time=_stamp(window.end))
        for page in _pages("payout", self.payout.ListDiamondCredits, request):
            yield from (_credit(c) for c in page.credits)

    def credits_by_gift(self, gift_ids: Sequence[str]) -> list[Credit]:
        return [
            _credit(c)
            for chunk in _chunks(gift_ids)
            for page in _pages(
                "payout", self.payout.ListDiamondCredits, payout_pb2.ListDiamondCreditsRequest(gift_ids=chunk)
            )
            for c in page.credits
        ]

    def payout_books(self, window: Window) -> PayoutBooks:
        books = PayoutBooks()
        for part in _summary_windows(window):
            request = payout_pb2.SummarizeBooksRequest(start_time=_stamp(part.start), end_time=_stamp(part.end))
            r = _ask("payout", self.payout.SummarizeBooks, request)
            books.payouts += [
                PayoutTotals(
                    _PAYOUT_STATES[p.state],
                    p.net.currency_code,
                    p.payouts,
                    p.diamonds,
                    p.gross.amount_minor,
                    p.fee.amount_minor,
                    p.net.amount_minor,
                )
                for p in r.payouts
            ]
            books.diamonds_outstanding = r.diamonds_outstanding
            books.diamonds_in_payout = r.diamonds_in_payout
        books.payouts = _merged(books.payouts, lambda p: (p.state, p.currency))
        return books


# --- helpers ---------------------------------------------------------------------------------------


def _ask(service: str, call: Callable[..., T], request: Any) -> T:
    try:
        return call(request, timeout=DEADLINE_SECONDS)
    except grpc.RpcError as error:
        raise ReadFailed(service, error) from error


def _pages(service: str, call: Callable[..., Any], request: Any) -> Iterator[Any]:
    """Every page of a listing: the request asked again with each next_page_token."""
    request.page_size = PAGE_SIZE
    while True:
        page = _ask(service, call, request)
        yield page
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    unique = sorted(set(ids))
    for i in range(0, len(unique), MAX_IDS):
        yield unique[i : i + MAX_IDS]


def _summary_windows(window: Window) -> Iterator[Window]:
    """The window in parts that one SummarizeBooks call may cover."""
    start = window.start
    while start < window.end:
        end = min(window.end, start + timedelta(days=SUMMARY_DAYS))
        yield Window(start, end)
        start = end


def _merged(rows: list[T], key: Callable[[T], tuple[str, str]]) -> list[T]:
    """Rows of the same key (from several parts of a window) added up, field by field."""
    merged: dict[tuple[str, str], T] = {}
    for row in rows:
        k = key(row)
        if k in merged:
            before = merged[k]
            values = {
                name: getattr(before, name) + value if isinstance(value, int) else value
                for name, value in vars(row).items()
            }
            merged[k] = type(row)(**values)
        else:
            merged[k] = row
    return [merged[k] for k in sorted(merged)]


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    return to_timestamp(moment.astimezone(UTC))


def _gift(r: gifting_pb2.GiftTransferRecord) -> Gift:
    t = r.transfer
    return Gift(
        gift_id=t.transfer_id,
        sender_id=t.sender_id,
        recipient_id=t.recipient_id,
        state=_GIFT_STATES[t.state],
        step=_STEPS[r.step],
        total_coins=t.total_coins,
        total_diamonds=t.total_diamonds,
        cause=r.cause,
        created_at=from_timestamp(t.create_time),
    )


def _hold(b: wallet_pb2.BookedHold) -> Hold:
    h = b.hold
    return Hold(
        hold_id=h.hold_id,
        gift_id=h.gift_id,
        user_id=h.user_id,
        state=_HOLD_STATES[h.state],
        amount=h.amount,
        promotional_amount=h.promotional_amount,
        spent=b.spent_coins,
        spent_promotional=b.spent_promotional_coins,
        capture_transfers=b.capture_transfers,
        created_at=from_timestamp(h.create_time),
    )


def _credit(b: payout_pb2.BookedCredit) -> Credit:
    c = b.credit
    return Credit(
        credit_id=c.credit_id,
        gift_id=c.gift_id,
        creator_id=c.creator_id,
        diamonds=c.diamonds,
        coins=b.coins,
        booked_diamonds=b.booked_diamonds,
        booked_share=b.booked_platform_share,
        diamond_transfers=b.diamond_transfers,
        created_at=from_timestamp(c.create_time),
    )
