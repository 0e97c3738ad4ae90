"""The payout domain (SPEC §5): creators, diamond credits, quotes, payouts and their processing.

Plain Python over a storage.UnitOfWork (one database transaction); no protobuf, no gRPC, no database.
Refusals are runtime.errors.DomainError. `Payouts` is the facade the servicer calls; the credits are
credits.py's, the processing through the provider processor.py's, the records and arithmetic model.py's.
Value moves only through the double-entry ledger, in the same transaction as the state change it
explains:

    credit     platform:diamonds_issued         -d  ->  creator:<id>:diamonds               +d
               platform:gift_coins              -c  ->  platform:gift_coins:creators_share   +d
                                                        platform:gift_coins:platform_share   +(c-d)
    request    creator:<id>:diamonds            -d  ->  creator:<id>:diamonds_in_payout     +d
    paid       creator:<id>:diamonds_in_payout  -d  ->  platform:diamonds_redeemed          +d
               platform:cash_issued:<cur>   -gross  ->  platform:cash_paid_out:<cur>      +net
                                                        platform:payout_fee_revenue:<cur> +fee
    failed     creator:<id>:diamonds_in_payout  -d  ->  creator:<id>:diamonds               +d

(Why a credit books the gift's coins too: credits.py's header.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime

from services.payout.credits import CreditReads, Credits, eligible
from services.payout.model import (
    DIAMOND,
    IN_FLIGHT,
    KYC_UNVERIFIED,
    KYC_VERIFIED,
    PAID,
    PAYOUT,
    REQUESTED,
    BookedCreditRecord,
    BooksSummary,
    Creator,
    CreatorRecord,
    Credit,
    CreditRequest,
    Destination,
    DiamondEntry,
    DiamondTransaction,
    Duplicate,
    Earnings,
    Page,
    Payout,
    PayoutAmounts,
    PayoutRecord,
    PayoutTerms,
    Quote,
    Rate,
    cash_value,
    creator_diamonds,
    creator_diamonds_in_payout,
    payout_amounts,
)
from services.payout.storage import UnitOfWork
from services.runtime.clock import Clock
from services.runtime.errors import (
    DomainError,
    already_exists,
    bad_field,
    failed_precondition,
    not_found,
    permission_denied,
)
from services.runtime.ledger import Overdraft, Posting, new_id
from services.runtime.money import format_money

# Importable from here too: the settings check a rate with them, the servicer types its work with it.
__all__ = ["Payouts", "Rate", "UnitOfWork", "cash_value", "payout_amounts"]


class Payouts:
    """The payout service's rules. Each method runs inside the caller's unit of work."""

    def __init__(self, terms: PayoutTerms, clock: Clock) -> None:
        self.terms = terms
        self.clock = clock
        self.credits = Credits(clock)

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
        except Duplicate as exc:  # registered before
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

    def open_platform_accounts(self, uow: UnitOfWork) -> None:
        """The platform accounts every credit moves diamonds and coins between, opened at start (idempotent)."""
        self.credits.open_platform_accounts(uow)

    def credit_diamonds(self, uow: UnitOfWork, request: CreditRequest) -> Credit:
        """The diamonds for one gift, once: a gift already credited returns its credit (idempotent by gift)."""
        [outcome] = self.credits.credit_many(uow, [request])
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    def read_credits(self, uow: UnitOfWork, requests: Sequence[CreditRequest]) -> CreditReads:
        """What deciding these credits reads, queued in the transaction's pipeline (`credit_many`'s `reads`)."""
        return self.credits.read(uow, requests)

    def credit_many(
        self, uow: UnitOfWork, requests: Sequence[CreditRequest], reads: CreditReads | None = None
    ) -> list[Credit | DomainError]:
        """Each request's outcome, exactly as credit_diamonds applied to them one after another would
        give it, in a constant number of statements (Credits.credit_many)."""
        return self.credits.credit_many(uow, requests, reads)

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

    def booked_credits(
        self,
        uow: UnitOfWork,
        page_size: int,
        start: datetime | None = None,
        end: datetime | None = None,
        gift_ids: tuple[str, ...] = (),
        after: tuple[datetime, str] | None = None,
    ) -> Page[BookedCreditRecord]:
        """Credits in (created_at, credit_id) order, made in [start, end) or of the gifts `gift_ids`, after
        the (created_at, credit_id) `after`: the reconciler's listing."""
        records = uow.credits.booked(page_size + 1, start, end, gift_ids, after)
        return Page(records[:page_size], len(records) > page_size)

    def summary(self, uow: UnitOfWork, start: datetime, end: datetime) -> BooksSummary:
        """Credits and payouts of [start, end); the diamonds outstanding now."""
        credits = uow.credits.window_totals(start, end)
        outstanding, in_payout = uow.diamonds.outstanding()
        return BooksSummary(
            credits=credits.credits,
            diamonds_credited=credits.diamonds,
            gift_coins=credits.coins,
            gift_promotional_coins=credits.promotional_coins,
            platform_share=credits.platform_share,
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
            uow.payouts.add(record)
        except Duplicate:
            # This creator already has a payout requested or processing (the database holds one at most).
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

    # helpers

    def _existing_creator(self, uow: UnitOfWork, creator_id: str) -> CreatorRecord:
        creator = uow.creators.get(creator_id)
        if creator is None:
            raise _creator_not_found(creator_id)
        return creator

    def _eligible(self, creator: CreatorRecord) -> bool:
        return eligible(creator, self.clock.now().date())

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
