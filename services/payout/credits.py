"""Diamond credits: each gift's diamonds to its creator, once, and the gift's coins booked with them.

A credit books the whole gift, once, in one transfer: its diamonds (unit diamond), and its c coins
(unit coin), split into the creators' share (d, the diamonds: a diamond is the creator's share of one
coin) and the platform's share (c - d, gifting's rounding included). The promotional part of the coins
is on the credit's record; wallet's ledger books it (spent: purchased or promotional). Payout
books it because the credit is the step that carries all three figures (CreditDiamonds has the coins),
and a credited gift always completes (gifting's saga); the platform accounts keep no stored balance,
so the coin entries are more rows in the same statements, not a row every credit locks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from services.payout.model import (
    COIN,
    CREATORS_SHARE,
    DIAMOND,
    DIAMONDS_ISSUED,
    GIFT_COINS,
    GIFT_CREDIT,
    PLATFORM_SHARE,
    CreatorRecord,
    Credit,
    CreditRecord,
    CreditRequest,
    creator_diamonds,
)
from services.payout.storage import UnitOfWork
from services.runtime.clock import Clock
from services.runtime.errors import DomainError, failed_precondition
from services.runtime.ledger import MAX_BALANCE, Movement, Posting, balance_limit_exceeded, new_id
from services.runtime.validation import age_on

ADULT_AGE = 18


def eligible(creator: CreatorRecord, today: date) -> bool:
    """Whether the creator may receive gifts and be paid: 18 or over, with gifting enabled."""
    return creator.gifting_enabled and age_on(creator.date_of_birth, today) >= ADULT_AGE


@dataclass(frozen=True)
class CreditReads:
    """What deciding credits reads (`Credits.read`), queued in the transaction's pipeline: each read's
    answer is waited for when it is called."""

    creators: Callable[[], dict[str, CreatorRecord]]
    credits: Callable[[], dict[str, CreditRecord]]  # by gift id: the gifts credited already
    diamonds: Callable[[], dict[str, int]]  # by creator: diamonds on the balance and in payouts (not locked)


class Credits:
    """The credits of gifts to their creators. Each method runs inside the caller's unit of work."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def open_platform_accounts(self, uow: UnitOfWork) -> None:
        """The platform accounts every credit moves diamonds and coins between, opened at start (idempotent)."""
        now = self.clock.now()
        uow.ledger.open_account(DIAMONDS_ISSUED, DIAMOND, now, platform=True)
        for code in (GIFT_COINS, CREATORS_SHARE, PLATFORM_SHARE):
            uow.ledger.open_account(code, COIN, now, platform=True)

    def read(self, uow: UnitOfWork, requests: Sequence[CreditRequest]) -> CreditReads:
        """What deciding these credits reads, queued in the transaction's pipeline: their creators and
        the gifts' credits (one round trip, with whatever else is queued)."""
        creator_ids = {r.creator_id for r in requests}
        return CreditReads(
            uow.creators.get_many(creator_ids),
            uow.credits.by_gifts({r.gift_id for r in requests}),
            uow.diamonds.held(creator_ids),
        )

    def credit_many(
        self, uow: UnitOfWork, requests: Sequence[CreditRequest], reads: CreditReads | None = None
    ) -> list[Credit | DomainError]:
        """Each request's outcome, exactly as crediting them one after another would give it; a refused
        request writes nothing. A constant number of statements whatever their number, sent in the
        transaction's pipeline: `read` (queued already when given: for these requests or more), the new
        credits inserted and the ledger's statements for all their transfers (sent with the commit). A
        credit of one of the gifts committed meanwhile (another batch, or a unary call under another
        request id) fails the transaction (UNIQUE(gift_id)), and the batch is decided again.
        """
        now = self.clock.now()
        reads = reads or self.read(uow, requests)
        outcomes, new = self._decide(requests, reads.credits(), reads.creators(), reads.diamonds(), now)
        uow.credits.add_new(new)
        # A credit of 0 diamonds (one Rose: the creator's share floors to nothing) books its coins, all
        # the platform's share; one of no coins at all moves nothing and has no transfer.
        movements = [Movement(GIFT_CREDIT, r.gift_id, _credit_postings(r), r.transfer_id) for r in new if r.coins]
        if movements:  # credits only add to holder balances: nothing to check before the commit
            uow.ledger.post_many(movements, now, checked=False)
        return outcomes

    def _decide(
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
                outcomes.append(_same_credit(existing, r))
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
            if creator is None or not eligible(creator, self.clock.now().date()):
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


def _same_credit(existing: CreditRecord, asked: CreditRequest) -> Credit | DomainError:
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
