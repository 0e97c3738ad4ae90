"""The payout domain (SPEC §5): creators, diamond credits, quotes, payouts and their processing.

Plain Python over a storage.UnitOfWork (one database transaction); no protobuf, no gRPC. Refusals
are runtime.errors.DomainError. Value moves only through the double-entry ledger, in the same
transaction as the state change it explains:

    credit     platform:diamonds_issued         -d  ->  creator:<id>:diamonds               +d
               platform:gift_coins              -c  ->  platform:gift_coins:creators_share   +d
                                                        platform:gift_coins:platform_share   +(c-d)
    request    creator:<id>:diamonds            -d  ->  creator:<id>:diamonds_in_payout     +d
    paid       creator:<id>:diamonds_in_payout  -d  ->  platform:diamonds_redeemed          +d
               platform:cash_issued:<cur>   -gross  ->  platform:cash_paid_out:<cur>      +net
                                                        platform:payout_fee_revenue:<cur> +fee
    failed     creator:<id>:diamonds_in_payout  -d  ->  creator:<id>:diamonds               +d

A credit books the whole gift, once, in one transfer: its diamonds (unit diamond), and its c coins
(unit coin), split into the creators' share (d, the diamonds: a diamond is the creator's share of one
coin) and the platform's share (c - d, gifting's rounding included). The promotional part of the coins
is on the credit's record; wallet's ledger books it (spent: purchased or promotional). Payout
books it because the credit is the step that carries all three figures (CreditDiamonds has the coins),
and a credited gift always completes (gifting's saga); the platform accounts keep no stored balance,
so the coin entries are more rows in the same statements, not a row every credit locks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Generic, TypeVar

from opentelemetry import trace
from sqlalchemy.exc import IntegrityError

from services.payout.provider import FAILED as PROVIDER_FAILED
from services.payout.provider import PAID as PROVIDER_PAID
from services.payout.provider import PayoutProvider, ProviderPayment, ProviderResult
from services.payout.storage import (
    COIN,
    CREATORS_SHARE,
    DIAMOND,
    DIAMONDS_ISSUED,
    DIAMONDS_REDEEMED,
    FAILED,
    GIFT_COINS,
    GIFT_CREDIT,
    IN_FLIGHT,
    PAID,
    PLATFORM_SHARE,
    PROCESSING,
    REQUESTED,
    BookedCreditRecord,
    CreatorRecord,
    CreditRecord,
    DiamondEntry,
    PayoutRecord,
    PayoutTotalsRow,
    UnitOfWork,
    cash_issued,
    cash_paid_out,
    creator_diamonds,
    creator_diamonds_in_payout,
    diamonds_outstanding,
    fee_revenue,
)
from services.runtime.clock import Clock
from services.runtime.db import Database, Selection
from services.runtime.errors import (
    DomainError,
    already_exists,
    bad_field,
    failed_precondition,
    not_found,
    permission_denied,
)
from services.runtime.ledger import MAX_BALANCE, Movement, Overdraft, Posting, balance_limit_exceeded, new_id
from services.runtime.money import format_money
from services.runtime.pipeline import Later
from services.runtime.telemetry import PAYOUT_OUTCOMES, traced
from services.runtime.validation import age_on

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
T = TypeVar("T")

ADULT_AGE = 18
BASIS_POINTS = 10_000

# Ledger transfer kinds (and GIFT_CREDIT, storage's).
PAYOUT = "payout"
PAYOUT_RETURNED = "payout_returned"
PAYOUT_PAID = "payout_paid"

# Creator KYC states and destination kinds, as stored.
KYC_UNVERIFIED, KYC_VERIFIED, KYC_REJECTED = "unverified", "verified", "rejected"
BANK_ACCOUNT, PAYPAL = "bank_account", "paypal"  # and provider.SANDBOX, the sandbox provider's own


# --- the arithmetic, written once ------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """`cents` minor units of cash for every `diamonds` diamonds (default 100 per 200)."""

    cents: int
    diamonds: int


@dataclass(frozen=True)
class PayoutAmounts:
    diamonds: int  # taken from the balance
    gross: int
    fee: int
    net: int


def cash_value(diamonds: int, rate: Rate) -> int:
    """Gross cash value of diamonds: floor(diamonds * cents / diamonds-per-rate)."""
    return diamonds * rate.cents // rate.diamonds


def payout_amounts(diamonds: int, rate: Rate, fee_bps: int) -> PayoutAmounts:
    """What a payout of (up to) `diamonds` diamonds takes and pays. Integers only; every rounding is here.

    - gross = floor(diamonds * rate.cents / rate.diamonds): cash is paid in whole minor units.
    - The payout takes only the diamonds that gross is worth: ceil(gross * rate.diamonds / rate.cents),
      never more than `diamonds`. The leftover diamonds (worth less than one minor unit) stay on the
      creator's balance, so no diamond is lost. (If one diamond is worth more than a minor unit, the
      taken diamonds may be worth a fraction of a minor unit more than gross: that fraction, smaller than
      any amount of cash, is the rounding in the platform's favour.)
    - fee = floor(gross * fee_bps / 10000): the floor is in the creator's favour.
    - net = gross - fee: what the creator receives. fee + net == gross exactly, so no cent is lost.
    """
    gross = cash_value(diamonds, rate)
    taken = -(-gross * rate.diamonds // rate.cents)  # ceil without floats
    fee = gross * fee_bps // BASIS_POINTS
    return PayoutAmounts(diamonds=taken, gross=gross, fee=fee, net=gross - fee)


@dataclass(frozen=True)
class PayoutTerms:
    rate: Rate
    currency: str
    fee_bps: int
    minimum: int  # net per payout
    daily_maximum: int  # net per creator per UTC day


# --- what the domain returns -------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    kind: str  # bank_account | paypal | sandbox
    account_reference: str
    currency: str


@dataclass(frozen=True)
class Creator:
    creator_id: str
    date_of_birth: date
    country_code: str
    eligible: bool
    gifting_enabled: bool
    kyc_status: str
    destination: Destination | None
    created_at: datetime


@dataclass(frozen=True)
class CreditRequest:
    """The diamonds one gift is to credit its creator, and the coins it cost (recorded on the credit)."""

    gift_id: str
    creator_id: str
    diamonds: int
    coins: int
    promotional_coins: int
    deadline: datetime | None = None  # refused once this has passed, unless credited before


@dataclass(frozen=True)
class CreditReads:
    """What deciding credits reads (`Payouts.read_credits`), queued in the transaction's pipeline."""

    creators: Later[dict[str, CreatorRecord]]
    credits: Later[dict[str, CreditRecord]]  # by gift id: the gifts credited already
    diamonds: Later[dict[str, int]]  # by creator: diamonds on the balance and in payouts (not locked)


@dataclass(frozen=True)
class Credit:
    credit_id: str
    gift_id: str
    creator_id: str
    diamonds: int
    coins: int
    promotional_coins: int
    created_at: datetime


@dataclass(frozen=True)
class Payout:
    payout_id: str
    creator_id: str
    amounts: PayoutAmounts
    currency: str
    state: str
    destination: Destination
    provider_reference: str
    failure_reason: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DiamondTransaction:
    transaction_id: str
    kind: str
    diamonds_delta: int
    reference: str
    created_at: datetime
    position: int  # orders the history; page cursors point at it


@dataclass(frozen=True)
class Earnings:
    diamond_balance: int
    cash_value: int
    pending_diamonds: int
    pending_net: int
    paid_net: int
    currency: str
    rate: Rate


@dataclass(frozen=True)
class Quote:
    amounts: PayoutAmounts
    currency: str
    minimum: int
    meets_minimum: bool
    daily_remaining: int
    within_daily_limit: bool


@dataclass(frozen=True)
class BooksSummary:
    """Payout's money over a window, and its diamonds outstanding now (`Payouts.summary`)."""

    credits: int
    diamonds_credited: int
    gift_coins: int
    gift_promotional_coins: int
    platform_share: int
    payouts: list[PayoutTotalsRow]  # requested in the window, by state and currency
    diamonds_outstanding: int
    diamonds_in_payout: int
    as_of: datetime


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


# --- creators, credits, payouts ----------------------------------------------------------------------


class Payouts:
    """The payout service's rules. Each method runs inside the caller's unit of work."""

    def __init__(self, terms: PayoutTerms, clock: Clock) -> None:
        self.terms = terms
        self.clock = clock

    # creators

    def register_creator(self, uow: UnitOfWork, creator_id: str, date_of_birth: date, country_code: str) -> Creator:
        now = self.clock.now()
        record = CreatorRecord(
            creator_id=creator_id,
            date_of_birth=date_of_birth,
            country_code=country_code,
            gifting_enabled=True,
            kyc_status=KYC_UNVERIFIED,
            destination_kind=None,
            destination_reference=None,
            destination_currency=None,
            created_at=now,
            updated_at=now,
        )
        try:
            uow.creators.add(record)
        except IntegrityError as exc:  # the primary key: registered before
            raise already_exists(
                "CREATOR_ALREADY_EXISTS", f"{creator_id} is already a creator", creator_id=creator_id
            ) from exc
        uow.ledger.open_account(creator_diamonds(creator_id), DIAMOND, now)
        uow.ledger.open_account(creator_diamonds_in_payout(creator_id), DIAMOND, now)
        return self._creator(record)

    def set_destination(self, uow: UnitOfWork, creator_id: str, destination: Destination) -> Creator:
        self._existing_creator(uow, creator_id)
        if destination.currency != self.terms.currency:
            raise bad_field(
                "CURRENCY_NOT_SUPPORTED",
                "destination.currency_code",
                f"payouts are paid in {self.terms.currency}, not {destination.currency}",
                currency_code=destination.currency,
                supported=self.terms.currency,
            )
        uow.creators.update(
            creator_id,
            destination_kind=destination.kind,
            destination_reference=destination.account_reference,
            destination_currency=destination.currency,
            updated_at=self.clock.now(),
        )
        return self._creator(self._existing_creator(uow, creator_id))

    def verify_creator(self, uow: UnitOfWork, creator_id: str, kyc_status: str) -> Creator:
        self._existing_creator(uow, creator_id)
        uow.creators.update(creator_id, kyc_status=kyc_status, updated_at=self.clock.now())
        return self._creator(self._existing_creator(uow, creator_id))

    # credits

    def credit_diamonds(self, uow: UnitOfWork, request: CreditRequest) -> Credit:
        """The diamonds for one gift, once: a gift already credited returns its credit (idempotent by gift)."""
        [outcome] = self.credit_many(uow, [request])
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    def read_credits(self, uow: UnitOfWork, requests: Sequence[CreditRequest]) -> CreditReads:
        """What deciding these credits reads, queued in the transaction's pipeline: their creators and
        the gifts' credits (one round trip, with whatever else is queued)."""
        creator_ids = {r.creator_id for r in requests}
        accounts = {c: (creator_diamonds(c), creator_diamonds_in_payout(c)) for c in creator_ids}
        return CreditReads(
            uow.creators.get_many(creator_ids),
            uow.credits.by_gifts({r.gift_id for r in requests}),
            uow.ledger.balances_later([code for pair in accounts.values() for code in pair]).then(
                lambda b: {c: b[held] + b[paying] for c, (held, paying) in accounts.items()}
            ),
        )

    def credit_many(
        self, uow: UnitOfWork, requests: Sequence[CreditRequest], reads: CreditReads | None = None
    ) -> list[Credit | DomainError]:
        """Each request's outcome, exactly as credit_diamonds applied to them one after another would
        give it; a refused request writes nothing. A constant number of statements whatever their number,
        sent in the transaction's pipeline: `read_credits` (queued already when given: for these
        requests or more), the new credits inserted and the ledger's statements for all their
        transfers (sent with the commit). A credit of one of the gifts committed meanwhile (another
        batch, or a unary call under another request id) fails the transaction (UNIQUE(gift_id)), and
        the batch is decided again.
        """
        now = self.clock.now()
        reads = reads or self.read_credits(uow, requests)
        outcomes, new = self._decide_credits(
            requests, reads.credits.get(), reads.creators.get(), reads.diamonds.get(), now
        )
        uow.credits.add_new(new)
        # A credit of 0 diamonds (one Rose: the creator's share floors to nothing) books its coins, all
        # the platform's share; one of no coins at all moves nothing and has no transfer.
        movements = [Movement(GIFT_CREDIT, r.gift_id, _credit_postings(r), r.transfer_id) for r in new if r.coins]
        if movements:  # credits only add to holder balances: nothing to check before the commit
            uow.ledger.post_many(movements, now, checked=False)
        return outcomes

    def open_platform_accounts(self, uow: UnitOfWork) -> None:
        """The platform accounts every credit moves diamonds and coins between, opened at start (idempotent)."""
        now = self.clock.now()
        uow.ledger.open_account(DIAMONDS_ISSUED, DIAMOND, now, platform=True)
        for code in (GIFT_COINS, CREATORS_SHARE, PLATFORM_SHARE):
            uow.ledger.open_account(code, COIN, now, platform=True)

    def _decide_credits(
        self,
        requests: Sequence[CreditRequest],
        credited: Mapping[str, CreditRecord],
        creators: Mapping[str, CreatorRecord],
        diamonds: Mapping[str, int],
        now: datetime,
    ) -> tuple[list[Credit | DomainError], list[CreditRecord]]:
        """Each request's outcome, in order, and the credits to record for them (`credited`: the gifts
        credited before; `diamonds`: each creator's diamonds, which no credit may take past MAX_BALANCE)."""
        known = dict(credited)
        held = dict(diamonds)
        outcomes: list[Credit | DomainError] = []
        new: list[CreditRecord] = []
        for r in requests:
            existing = known.get(r.gift_id)
            if existing is not None:  # checked first: a credited gift must still complete
                outcomes.append(self._same_credit(existing, r))
                continue
            if r.deadline is not None and now > r.deadline:
                outcomes.append(
                    failed_precondition(
                        "CREDIT_DEADLINE_PASSED",
                        f"gift {r.gift_id} was not credited by its deadline {r.deadline.isoformat()}; nothing credited",
                        gift_id=r.gift_id,
                        deadline=r.deadline.isoformat(),
                    )
                )
                continue
            creator = creators.get(r.creator_id)
            if creator is None or not self._eligible(creator):
                outcomes.append(
                    failed_precondition(
                        "RECIPIENT_CANNOT_RECEIVE",
                        f"{r.creator_id} cannot receive gifts"
                        + (": not a creator" if creator is None else ": not eligible (18+, gifting enabled)"),
                        creator_id=r.creator_id,
                        gift_id=r.gift_id,
                    )
                )
                continue
            if held[r.creator_id] + r.diamonds > MAX_BALANCE:
                outcomes.append(balance_limit_exceeded(r.creator_id, DIAMOND, held[r.creator_id], r.diamonds))
                continue
            held[r.creator_id] += r.diamonds
            record = _new_credit(r, now)
            known[r.gift_id] = record
            new.append(record)
            outcomes.append(_credit(record))
        return outcomes, new

    def _same_credit(self, existing: CreditRecord, asked: CreditRequest) -> Credit | DomainError:
        """The gift's recorded credit if it was asked with the same terms; CREDIT_MISMATCH if not."""
        recorded = (existing.creator_id, existing.diamonds, existing.coins, existing.promotional_coins)
        if recorded != (asked.creator_id, asked.diamonds, asked.coins, asked.promotional_coins):
            return failed_precondition(
                "CREDIT_MISMATCH",
                f"gift {existing.gift_id} was credited as {existing.diamonds} diamonds to {existing.creator_id}",
                gift_id=existing.gift_id,
                credited_creator_id=existing.creator_id,
                credited_diamonds=existing.diamonds,
                credited_coins=existing.coins,
                credited_promotional_coins=existing.promotional_coins,
            )
        return _credit(existing)

    # reads

    def earnings(self, uow: UnitOfWork, creator_id: str) -> Earnings:
        self._existing_creator(uow, creator_id)
        balance = uow.ledger.balance(creator_diamonds(creator_id))
        currency = self.terms.currency
        return Earnings(
            diamond_balance=balance,
            cash_value=cash_value(balance, self.terms.rate),
            pending_diamonds=uow.ledger.balance(creator_diamonds_in_payout(creator_id)),
            pending_net=uow.payouts.net_total(creator_id, IN_FLIGHT, currency),
            paid_net=uow.payouts.net_total(creator_id, (PAID,), currency),
            currency=currency,
            rate=self.terms.rate,
        )

    def diamond_transactions(
        self, uow: UnitOfWork, creator_id: str, page_size: int, before: int | None
    ) -> Page[DiamondTransaction]:
        self._existing_creator(uow, creator_id)
        entries = uow.history.page(creator_id, page_size + 1, before)
        return Page([_transaction(e) for e in entries[:page_size]], len(entries) > page_size)

    def get_payout(self, uow: UnitOfWork, creator_id: str, payout_id: str) -> Payout:
        """One of the creator's payouts. Any other id, another creator's or none at all, is refused the
        same way (PERMISSION_DENIED, checked before NOT_FOUND as AIP-211 asks), so ids reveal nothing."""
        record = uow.payouts.get(payout_id)
        if record is None or record.creator_id != creator_id:
            raise permission_denied(f"payout {payout_id} is not one of {creator_id}'s payouts", payout_id=payout_id)
        return _payout(record)

    def list_payouts(
        self, uow: UnitOfWork, creator_id: str, page_size: int, before: tuple[datetime, str] | None
    ) -> Page[Payout]:
        self._existing_creator(uow, creator_id)
        records = uow.payouts.page(creator_id, page_size + 1, before)
        return Page([_payout(r) for r in records[:page_size]], len(records) > page_size)

    # operators and the reconciler

    def creators(self, uow: UnitOfWork, kyc_status: str | None, page_size: int, after: str | None) -> Page[Creator]:
        records = uow.creators.page(kyc_status, after, page_size + 1)
        return Page([self._creator(r) for r in records[:page_size]], len(records) > page_size)

    def payouts_by_state(
        self, uow: UnitOfWork, states: Sequence[str], page_size: int, after: tuple[datetime, str] | None
    ) -> Page[Payout]:
        records = uow.payouts.by_states(states, after, page_size + 1)
        return Page([_payout(r) for r in records[:page_size]], len(records) > page_size)

    def booked_credits(self, uow: UnitOfWork, selection: Selection, page_size: int) -> Page[BookedCreditRecord]:
        records = uow.credits.booked(selection, page_size + 1)
        return Page(records[:page_size], len(records) > page_size)

    def summary(self, uow: UnitOfWork, start: datetime, end: datetime) -> BooksSummary:
        """Credits and payouts of [start, end); the diamonds outstanding now."""
        credits, diamonds, coins, promotional, share = uow.credits.window_totals(start, end)
        outstanding, in_payout = diamonds_outstanding(uow.conn)
        return BooksSummary(
            credits=credits,
            diamonds_credited=diamonds,
            gift_coins=coins,
            gift_promotional_coins=promotional,
            platform_share=share,
            payouts=uow.payouts.window_totals(start, end),
            diamonds_outstanding=outstanding,
            diamonds_in_payout=in_payout,
            as_of=self.clock.now(),
        )

    # quotes and payouts

    def quote(self, uow: UnitOfWork, creator_id: str, diamonds: int) -> Quote:
        """What a payout of `diamonds` (0: the whole balance) would pay, and whether it may be requested."""
        self._existing_creator(uow, creator_id)
        balance = uow.ledger.balance(creator_diamonds(creator_id))
        wanted = diamonds or balance
        if wanted > balance:
            raise failed_precondition(
                "INSUFFICIENT_DIAMONDS",
                f"{creator_id} has {balance} diamonds, not {wanted}",
                creator_id=creator_id,
                diamonds=wanted,
                balance=balance,
            )
        amounts = payout_amounts(wanted, self.terms.rate, self.terms.fee_bps)
        today_start = self.clock.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        paid_today = uow.payouts.net_total(creator_id, (*IN_FLIGHT, PAID), self.terms.currency, since=today_start)
        remaining = max(0, self.terms.daily_maximum - paid_today)
        return Quote(
            amounts=amounts,
            currency=self.terms.currency,
            minimum=self.terms.minimum,
            meets_minimum=amounts.net >= self.terms.minimum,
            daily_remaining=remaining,
            within_daily_limit=amounts.net <= remaining,
        )

    def request_payout(self, uow: UnitOfWork, creator_id: str, diamonds: int) -> Payout:
        """Move the quoted diamonds out of the balance into a new payout (state requested)."""
        # Locking the creator row serializes one creator's requests, so the daily sum read below is exact.
        creator = uow.creators.get(creator_id, for_update=True)
        if creator is None:
            raise _creator_not_found(creator_id)
        if not self._eligible(creator):
            raise failed_precondition(
                "CREATOR_NOT_ELIGIBLE", f"{creator_id} is not eligible for payouts (18+)", creator_id=creator_id
            )
        if creator.kyc_status != KYC_VERIFIED:
            raise failed_precondition(
                "KYC_NOT_VERIFIED",
                f"{creator_id}'s identity is {creator.kyc_status}, not verified",
                creator_id=creator_id,
                kyc_status=creator.kyc_status,
            )
        destination = _destination(creator)
        if destination is None:
            raise failed_precondition(
                "PAYOUT_DESTINATION_MISSING", f"{creator_id} has no payout destination", creator_id=creator_id
            )
        if destination.currency != self.terms.currency:  # set before the payout currency changed
            raise failed_precondition(
                "PAYOUT_DESTINATION_UNSUPPORTED",
                f"payouts are paid in {self.terms.currency}, the destination on file takes {destination.currency}: "
                "set the destination again",
                creator_id=creator_id,
                currency_code=destination.currency,
                supported=self.terms.currency,
            )
        quote = self.quote(uow, creator_id, diamonds)
        amounts = quote.amounts
        if not quote.meets_minimum:
            raise failed_precondition(
                "BELOW_PAYOUT_THRESHOLD",
                f"net {format_money(amounts.net, quote.currency)} is below the minimum payout of "
                f"{format_money(quote.minimum, quote.currency)}",
                net=amounts.net,
                minimum=quote.minimum,
                currency_code=quote.currency,
            )
        if not quote.within_daily_limit:
            raise failed_precondition(
                "DAILY_PAYOUT_LIMIT_EXCEEDED",
                f"net {format_money(amounts.net, quote.currency)} exceeds the "
                f"{format_money(quote.daily_remaining, quote.currency)} still payable today",
                net=amounts.net,
                daily_remaining=quote.daily_remaining,
                daily_maximum=self.terms.daily_maximum,
                currency_code=quote.currency,
            )
        now = self.clock.now()
        payout_id = new_id("po")
        record = PayoutRecord(
            payout_id=payout_id,
            creator_id=creator_id,
            diamonds=amounts.diamonds,
            gross=amounts.gross,
            fee=amounts.fee,
            net=amounts.net,
            currency=quote.currency,
            state=REQUESTED,
            destination_kind=destination.kind,
            destination_reference=destination.account_reference,
            destination_currency=destination.currency,
            provider_reference="",
            failure_reason="",
            submissions=0,
            created_at=now,
            updated_at=now,
        )
        try:
            with uow.conn.begin_nested():
                uow.payouts.add(record)
        except IntegrityError:
            # The partial unique index: this creator already has a payout requested or processing.
            in_flight = uow.payouts.in_flight(creator_id)
            if in_flight is None:
                raise
            raise failed_precondition(
                "PAYOUT_IN_FLIGHT",
                f"payout {in_flight} is still in flight; one at a time",
                creator_id=creator_id,
                payout_id=in_flight,
            ) from None
        try:
            uow.ledger.post(
                PAYOUT,
                payout_id,
                [
                    Posting(creator_diamonds(creator_id), -amounts.diamonds),
                    Posting(creator_diamonds_in_payout(creator_id), amounts.diamonds),
                ],
                now,
                transfer_id=f"payout:{payout_id}",
            )
        except Overdraft as exc:  # a concurrent movement took the diamonds after the quote
            raise failed_precondition(
                "INSUFFICIENT_DIAMONDS",
                f"{creator_id} no longer has {amounts.diamonds} diamonds",
                creator_id=creator_id,
                diamonds=amounts.diamonds,
            ) from exc
        return _payout(record)

    # processing (driven by PayoutProcessor)

    def start_submission(self, uow: UnitOfWork, payout_id: str) -> ProviderPayment | None:
        """requested -> processing, before the provider is called; None if another worker took it."""
        record = uow.payouts.get(payout_id)
        if record is None or record.state != REQUESTED:
            return None
        moved = uow.payouts.transition(
            payout_id, REQUESTED, state=PROCESSING, submissions=record.submissions + 1, updated_at=self.clock.now()
        )
        return _payment(record) if moved else None

    def resubmission(self, uow: UnitOfWork, payout_id: str) -> ProviderPayment | None:
        """A processing payout the provider never received (a crash before the call): submit it again."""
        record = uow.payouts.get(payout_id)
        if record is None or record.state != PROCESSING:
            return None
        uow.payouts.transition(payout_id, PROCESSING, submissions=record.submissions + 1, updated_at=self.clock.now())
        return _payment(record)

    def processing_payment(self, uow: UnitOfWork, payout_id: str) -> ProviderPayment | None:
        record = uow.payouts.get(payout_id)
        return _payment(record) if record is not None and record.state == PROCESSING else None

    def apply_result(self, uow: UnitOfWork, payout_id: str, result: ProviderResult) -> str:
        """Record the provider's answer for a processing payout; returns the payout's state after it."""
        record = uow.payouts.get(payout_id)
        if record is None or record.state != PROCESSING:
            return record.state if record else ""
        now = self.clock.now()
        if result.state == PROVIDER_PAID:
            if uow.payouts.transition(
                payout_id, PROCESSING, state=PAID, provider_reference=result.provider_reference, updated_at=now
            ):
                self._post_paid(uow, record, now)
            return PAID
        if result.state == PROVIDER_FAILED:
            if uow.payouts.transition(
                payout_id,
                PROCESSING,
                state=FAILED,
                provider_reference=result.provider_reference,
                failure_reason=result.failure_reason[:256] or "refused by the payout provider",
                updated_at=now,
            ):
                uow.ledger.post(
                    PAYOUT_RETURNED,
                    payout_id,
                    [
                        Posting(creator_diamonds_in_payout(record.creator_id), -record.diamonds),
                        Posting(creator_diamonds(record.creator_id), record.diamonds),
                    ],
                    now,
                    transfer_id=f"payout-returned:{payout_id}",
                )
            return FAILED
        uow.payouts.set_provider_reference(payout_id, result.provider_reference, now)
        return PROCESSING

    def _post_paid(self, uow: UnitOfWork, record: PayoutRecord, now: datetime) -> None:
        currency = record.currency
        for code, unit in (
            (DIAMONDS_REDEEMED, DIAMOND),
            (cash_issued(currency), currency),
            (cash_paid_out(currency), currency),
            (fee_revenue(currency), currency),
        ):
            uow.ledger.open_account(code, unit, now, platform=True)
        uow.ledger.post(
            PAYOUT_PAID,
            record.payout_id,
            [
                Posting(creator_diamonds_in_payout(record.creator_id), -record.diamonds),
                Posting(DIAMONDS_REDEEMED, record.diamonds),
                Posting(cash_issued(currency), -record.gross),
                Posting(cash_paid_out(currency), record.net),
                Posting(fee_revenue(currency), record.fee),
            ],
            now,
            transfer_id=f"payout-paid:{record.payout_id}",
        )

    # helpers

    def _existing_creator(self, uow: UnitOfWork, creator_id: str) -> CreatorRecord:
        creator = uow.creators.get(creator_id)
        if creator is None:
            raise _creator_not_found(creator_id)
        return creator

    def _eligible(self, creator: CreatorRecord) -> bool:
        return creator.gifting_enabled and age_on(creator.date_of_birth, self.clock.now().date()) >= ADULT_AGE

    def _creator(self, record: CreatorRecord) -> Creator:
        return Creator(
            creator_id=record.creator_id,
            date_of_birth=record.date_of_birth,
            country_code=record.country_code,
            eligible=self._eligible(record),
            gifting_enabled=record.gifting_enabled,
            kyc_status=record.kyc_status,
            destination=_destination(record),
            created_at=record.created_at,
        )


def _creator_not_found(creator_id: str) -> DomainError:
    return not_found(
        "CREATOR_NOT_FOUND", f"{creator_id} is not a creator (RegisterCreator first)", creator_id=creator_id
    )


def _destination(record: CreatorRecord) -> Destination | None:
    if not record.destination_kind:
        return None
    return Destination(record.destination_kind, record.destination_reference or "", record.destination_currency or "")


def _credit_postings(r: CreditRecord) -> list[Posting]:
    """A gift's booking (the module's header): its diamonds to the creator, its coins split into the
    creators' and the platform's shares (zero amounts are left out by the ledger)."""
    return [
        Posting(DIAMONDS_ISSUED, -r.diamonds),
        Posting(creator_diamonds(r.creator_id), r.diamonds),
        Posting(GIFT_COINS, -r.coins),
        Posting(CREATORS_SHARE, r.diamonds),
        Posting(PLATFORM_SHARE, r.coins - r.diamonds),
    ]


def _new_credit(request: CreditRequest, now: datetime) -> CreditRecord:
    credit_id = new_id("cr")
    return CreditRecord(
        credit_id=credit_id,
        gift_id=request.gift_id,
        creator_id=request.creator_id,
        diamonds=request.diamonds,
        coins=request.coins,
        promotional_coins=request.promotional_coins,
        transfer_id=f"credit:{credit_id}",
        created_at=now,
    )


def _credit(record: CreditRecord) -> Credit:
    return Credit(
        credit_id=record.credit_id,
        gift_id=record.gift_id,
        creator_id=record.creator_id,
        diamonds=record.diamonds,
        coins=record.coins,
        promotional_coins=record.promotional_coins,
        created_at=record.created_at,
    )


def _payout(record: PayoutRecord) -> Payout:
    return Payout(
        payout_id=record.payout_id,
        creator_id=record.creator_id,
        amounts=PayoutAmounts(record.diamonds, record.gross, record.fee, record.net),
        currency=record.currency,
        state=record.state,
        destination=Destination(record.destination_kind, record.destination_reference, record.destination_currency),
        provider_reference=record.provider_reference,
        failure_reason=record.failure_reason,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _transaction(entry: DiamondEntry) -> DiamondTransaction:
    return DiamondTransaction(
        transaction_id=entry.transfer_id,
        kind=entry.kind,
        diamonds_delta=entry.amount,
        reference=entry.reference,
        created_at=entry.created_at,
        position=entry.entry_id,
    )


def _payment(record: PayoutRecord) -> ProviderPayment:
    return ProviderPayment(
        idempotency_key=record.payout_id,
        beneficiary=record.creator_id,
        destination_kind=record.destination_kind,
        destination_reference=record.destination_reference,
        amount_minor=record.net,
        currency=record.currency,
    )


# --- processing ----------------------------------------------------------------------------------------


@dataclass
class ProcessingReport:
    """What one pass of the processor did, by resulting state."""

    submitted: int = 0
    paid: int = 0
    failed: int = 0
    still_processing: int = 0
    errors: list[str] = field(default_factory=list)


class PayoutProcessor:
    """Drives payouts through the provider: requested -> processing -> paid | failed.

    Never pays twice, whatever crashes when: a payout is marked processing (committed) *before* the
    provider is called, and the provider is keyed by the payout id. After a restart a processing payout
    is polled by that key: a payment the provider made is found and recorded; one it never received
    (a crash between the commit and the call) is submitted again under the same key. Settling is a
    conditional update from processing, so two processors cannot settle one payout twice.
    """

    def __init__(self, db: Database, payouts: Payouts, provider: PayoutProvider, batch_size: int = 100) -> None:
        self.db = db
        self.payouts = payouts
        self.provider = provider
        self.batch_size = batch_size

    def process_due(self) -> ProcessingReport:
        report = ProcessingReport()
        processing = self.db.run(lambda conn: UnitOfWork(conn).payouts.ids_in_state(PROCESSING, self.batch_size))
        requested = self.db.run(lambda conn: UnitOfWork(conn).payouts.ids_in_state(REQUESTED, self.batch_size))
        for payout_id in processing:
            with traced(), tracer.start_as_current_span("payout.poll", attributes={"giftcoin.payout_id": payout_id}):
                self._guarded(report, payout_id, self._poll)
        for payout_id in requested:
            with traced(), tracer.start_as_current_span("payout.submit", attributes={"giftcoin.payout_id": payout_id}):
                if self._guarded(report, payout_id, self._submit):
                    report.submitted += 1
        return report

    def _guarded(self, report: ProcessingReport, payout_id: str, step: Callable[[str], str]) -> str:
        """Run one payout's step; its state after it ("" if another worker had it)."""
        try:
            state = step(payout_id)
        except Exception as error:  # the provider or database failed: retried on the next pass
            log.exception("payout %s: processing failed; retrying later", payout_id)
            report.errors.append(f"{payout_id}: {type(error).__name__}: {error}")
            return ""
        if state == PAID:
            report.paid += 1
        elif state == FAILED:
            report.failed += 1
        elif state == PROCESSING:
            report.still_processing += 1
        return state

    def _submit(self, payout_id: str) -> str:
        payment = self.db.run(lambda conn: self.payouts.start_submission(UnitOfWork(conn), payout_id))
        if payment is None:
            return ""
        result = self.provider.submit(payment)
        return self._apply(payout_id, result)

    def _poll(self, payout_id: str) -> str:
        payment = self.db.run(lambda conn: self.payouts.processing_payment(UnitOfWork(conn), payout_id))
        if payment is None:
            return ""
        result = self.provider.status(payment.idempotency_key)
        if result is None:
            payment = self.db.run(lambda conn: self.payouts.resubmission(UnitOfWork(conn), payout_id))
            if payment is None:
                return ""
            result = self.provider.submit(payment)
        return self._apply(payout_id, result)

    def _apply(self, payout_id: str, result: ProviderResult) -> str:
        state = self.db.run(lambda conn: self.payouts.apply_result(UnitOfWork(conn), payout_id, result))
        if state in (PAID, FAILED):
            log.info("payout %s %s (provider reference %s)", payout_id, state, result.provider_reference)
            PAYOUT_OUTCOMES.add(1, {"giftcoin.payout.state": state})
        return state
