"""The reconciliation: do the three services' books agree, gift by gift, over a time window?

For every gift recorded in the window, and every hold and diamond credit made in it (whatever gift
they name), the reconciler reads the gift at gifting, its hold at wallet and its credit at payout,
each with what that service's ledger booked for it, and checks:

- a COMPLETED gift has exactly one captured hold for its coins (the wallet's ledger spent them once)
  and exactly one credit of its diamonds to its recipient (payout's ledger credited them once and
  booked the platform's share, coins - diamonds);
- a FAILED gift cost nothing: its hold, if any, was released or lapsed, and it has no credit;
- a PENDING gift is in flight while younger than the saga's normal time (`in_flight`): not a
  discrepancy (and the watermark stays before it); older, it is stuck;
- no hold and no credit exists without its gift.

Anything else is a `Discrepancy`, with its ids, its age and what a person should do. The money
summary puts the window's flows side by side: fiat taken, given back (and reversed), coins issued, spent
(captured for the window's completed gifts), diamonds credited for them and the platform's share,
payouts, fees; and, as of the run, coins held and outstanding, diamonds outstanding.

Plain Python over `Books`: the CLI (`giftctl reconcile`) and the CronJob (`python -m
services.reconciler`) call it through `services.reconciler.check`; so can the benchmark.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from services.reconciler.books import Books, Credit, Gift, Hold, PayoutTotals, Refunds, Reversals, Takings, Window

DEFAULT_IN_FLIGHT = timedelta(minutes=15)

# Discrepancy kinds, and what a person should do about each.
ACTIONS = {
    "STUCK_GIFT": (
        "Check that gifting reaches wallet and payout (its logs, its recovery loop): the gift then completes "
        "or fails on its own. `giftctl gifting transfers --id <gift>` shows its step and cause."
    ),
    "COMPLETED_NOT_CAPTURED": (
        "The creator was credited for coins the viewer still has: capture the gift's hold (wallet CaptureHold "
        "for the gift, as service:gifting; it captures a lapsed hold too), then find how the gift completed without it."
    ),
    "CAPTURE_MISMATCH": (
        "Wallet spent a different amount for the gift than it cost (or spent it twice): book a correction "
        "transfer on the viewer's wallet for the difference, then find the cause."
    ),
    "COMPLETED_NOT_CREDITED": (
        "The viewer paid and the creator got nothing: credit the gift (payout CreditDiamonds with the gift's "
        "id, recipient, coins and diamonds, as service:gifting; a gift is credited once)."
    ),
    "CREDIT_MISMATCH": (
        "Payout credited other terms than the gift's (creator, diamonds or coins): reverse the credit with a "
        "correction transfer and credit the gift's terms, before a payout takes the diamonds."
    ),
    "DOUBLE_CREDIT": (
        "The creator was credited more than once for one gift: reverse the extra credit with a correction "
        "transfer before a payout takes the diamonds, then find the cause."
    ),
    "CREDIT_NOT_BOOKED": (
        "Payout's ledger does not hold what its credit record says (diamonds or the platform's share): book "
        "the missing part with a correction transfer, then find the cause."
    ),
    "FAILED_BUT_CAPTURED": (
        "The viewer paid for a gift that failed: give the coins back with a correction transfer to the "
        "viewer's wallet, then find how the hold was captured."
    ),
    "FAILED_BUT_HELD": (
        "A failed gift still holds the viewer's coins: release the hold (wallet ReleaseHold for the gift, as "
        "service:gifting); the wallet also releases it when it lapses."
    ),
    "FAILED_BUT_CREDITED": (
        "The creator was credited for a gift that failed: reverse the credit with a correction transfer "
        "before a payout takes the diamonds, then find the cause."
    ),
    "HOLD_WITHOUT_GIFT": (
        "Wallet holds (or spent) coins for a gift gifting never recorded: release the hold, or give captured "
        "coins back with a correction transfer."
    ),
    "CREDIT_WITHOUT_GIFT": (
        "Payout credited diamonds for a gift gifting never recorded: reverse the credit with a correction "
        "transfer before a payout takes the diamonds."
    ),
}


@dataclass(frozen=True)
class Discrepancy:
    kind: str  # a key of ACTIONS
    gift_id: str
    detail: str  # what disagrees, with the figures
    age_seconds: int  # since the gift (or its hold or credit) was made
    hold_id: str = ""
    credit_id: str = ""
    sender_id: str = ""
    recipient_id: str = ""

    @property
    def action(self) -> str:
        return ACTIONS[self.kind]


@dataclass
class MoneySummary:
    """The window's money, side by side; `*_now` figures are as of the run."""

    takings: list[Takings] = field(default_factory=list)  # fiat in, by store and currency
    refunds: list[Refunds] = field(default_factory=list)  # fiat given back, by kind and currency
    reversals: list[Reversals] = field(default_factory=list)  # refunds the stores took back, by currency
    coins_purchased: int = 0  # coins issued by purchases
    coins_granted: int = 0  # promotional coins issued by claims
    coins_spent: int = 0  # captured for the window's completed gifts
    coins_spent_promotional: int = 0
    diamonds_credited: int = 0  # for the window's completed gifts
    platform_share: int = 0  # of the window's completed gifts, in coins: coins spent - diamonds credited
    payouts: list[PayoutTotals] = field(default_factory=list)  # requested in the window, by state
    coins_held_now: int = 0
    coins_outstanding_now: int = 0
    coins_outstanding_promotional_now: int = 0
    promotion_budgets_remaining_now: int = 0
    diamonds_outstanding_now: int = 0
    diamonds_in_payout_now: int = 0

    def paid(self, field_name: str) -> dict[str, int]:
        """A figure of the paid payouts (diamonds, gross_minor, fee_minor, net_minor), by currency."""
        totals: dict[str, int] = defaultdict(int)
        for p in self.payouts:
            if p.state == "paid":
                totals[p.currency] += getattr(p, field_name)
        return dict(totals)


@dataclass
class Report:
    window: Window
    as_of: datetime
    watermark: datetime  # every gift recorded before it is settled (checked): the next run may start here
    gifts: int = 0  # gifts recorded in the window
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    checked: int = 0  # gifts, holds and credits examined (those of the window and those they name)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    money: MoneySummary = field(default_factory=MoneySummary)

    @property
    def ok(self) -> bool:
        return not self.discrepancies


def reconcile(books: Books, window: Window, now: datetime, in_flight: timedelta = DEFAULT_IN_FLIGHT) -> Report:
    """Check the books of the window's gifts, holds and credits, and sum up its money."""
    gifts = {g.gift_id: g for g in books.gifts(window)}
    of_window = set(gifts)
    holds = {h.gift_id: h for h in books.holds(window)}
    credits = {c.gift_id: c for c in books.credits(window)}
    # What the window's records name outside it: a hold made just after its gift was recorded (the
    # gift before the window's start), a credit made after the window's end, ...
    gifts.update({g.gift_id: g for g in books.gifts_by_id(sorted((holds.keys() | credits.keys()) - gifts.keys()))})
    holds.update({h.gift_id: h for h in books.holds_by_gift(sorted(gifts.keys() - holds.keys()))})
    credits.update({c.gift_id: c for c in books.credits_by_gift(sorted(gifts.keys() - credits.keys()))})

    report = Report(window, now, window.end)
    money = report.money
    for gift_id in sorted(gifts.keys() | holds.keys() | credits.keys()):
        gift, hold, credit = gifts.get(gift_id), holds.get(gift_id), credits.get(gift_id)
        report.checked += 1
        found = _check(gift, hold, credit, now, in_flight)
        report.discrepancies += found
        if gift is None or gift_id not in of_window:
            continue
        report.gifts += 1
        if gift.state == "pending" and not found:
            report.in_flight += 1
            report.watermark = min(report.watermark, gift.created_at)
        elif gift.state == "completed":
            report.completed += 1
            if hold is not None:
                money.coins_spent += hold.spent
                money.coins_spent_promotional += hold.spent_promotional
            if credit is not None:
                money.diamonds_credited += credit.booked_diamonds
                money.platform_share += credit.booked_share
        elif gift.state == "failed":
            report.failed += 1

    wallet, payout = books.wallet_books(window), books.payout_books(window)
    money.takings, money.refunds, money.reversals = wallet.takings, wallet.refunds, wallet.reversals
    money.coins_purchased, money.coins_granted = wallet.coins_purchased, wallet.coins_granted
    money.coins_held_now, money.coins_outstanding_now = wallet.coins_held, wallet.coins_outstanding
    money.coins_outstanding_promotional_now = wallet.coins_outstanding_promotional
    money.promotion_budgets_remaining_now = wallet.promotion_budgets_remaining
    money.payouts = payout.payouts
    money.diamonds_outstanding_now, money.diamonds_in_payout_now = (
        payout.diamonds_outstanding,
        payout.diamonds_in_payout,
    )
    return report


def _check(
    gift: Gift | None, hold: Hold | None, credit: Credit | None, now: datetime, in_flight: timedelta
) -> list[Discrepancy]:
    """The discrepancies of one gift id: its gift, hold and credit (each None if the service has none)."""
    made = min(r.created_at for r in (gift, hold, credit) if r is not None)
    ids = {
        "hold_id": hold.hold_id if hold else "",
        "credit_id": credit.credit_id if credit else "",
        "sender_id": gift.sender_id if gift else (hold.user_id if hold else ""),
        "recipient_id": gift.recipient_id if gift else (credit.creator_id if credit else ""),
    }
    gift_id = (gift or hold or credit).gift_id  # type: ignore[union-attr]
    age = int((now - made).total_seconds())

    def found(kind: str, detail: str) -> Discrepancy:
        return Discrepancy(kind, gift_id, detail, age, **ids)

    if gift is None:
        out = []
        if hold is not None:
            out.append(found("HOLD_WITHOUT_GIFT", f"hold {hold.hold_id} of {hold.amount} coins is {hold.state}"))
        if credit is not None:
            out.append(found("CREDIT_WITHOUT_GIFT", f"credit {credit.credit_id} of {credit.diamonds} diamonds"))
        return out
    if gift.state == "pending":
        if now - gift.created_at <= in_flight:
            return []
        return [found("STUCK_GIFT", f"pending at step {gift.step} for {age}s" + _holding(hold, credit))]
    if gift.state == "failed":
        return _failed(gift, hold, credit, found)
    return _completed(gift, hold, credit, found)


_Found = Callable[[str, str], Discrepancy]  # a discrepancy of the gift being checked: (kind, detail)


def _holding(hold: Hold | None, credit: Credit | None) -> str:
    parts = [f"hold {hold.state}" if hold else "no hold", f"credit of {credit.diamonds}" if credit else "no credit"]
    return " (" + ", ".join(parts) + ")"


def _failed(gift: Gift, hold: Hold | None, credit: Credit | None, found: _Found) -> list[Discrepancy]:
    out = []
    if hold is not None and hold.state == "captured":
        out.append(found("FAILED_BUT_CAPTURED", f"gift failed ({gift.cause}) but its hold spent {hold.spent} coins"))
    elif hold is not None and hold.state == "held":
        out.append(found("FAILED_BUT_HELD", f"gift failed ({gift.cause}) but its hold still holds {hold.amount} coins"))
    if credit is not None:
        out.append(
            found(
                "FAILED_BUT_CREDITED",
                f"gift failed ({gift.cause}) but {credit.creator_id} was credited {credit.booked_diamonds} diamonds",
            )
        )
    return out


def _completed(gift: Gift, hold: Hold | None, credit: Credit | None, found: _Found) -> list[Discrepancy]:
    out = []
    if hold is None or hold.state != "captured":
        state = "no hold" if hold is None else f"its hold is {hold.state}"
        out.append(found("COMPLETED_NOT_CAPTURED", f"gift of {gift.total_coins} coins completed; {state}"))
    elif (hold.amount, hold.spent, hold.capture_transfers) != (gift.total_coins, gift.total_coins, 1):
        out.append(
            found(
                "CAPTURE_MISMATCH",
                f"gift of {gift.total_coins} coins: hold of {hold.amount}, ledger spent {hold.spent} "
                f"in {hold.capture_transfers} capture transfer(s)",
            )
        )
    if credit is None:
        out.append(found("COMPLETED_NOT_CREDITED", f"gift of {gift.total_diamonds} diamonds completed; no credit"))
        return out
    expected_transfers = 1 if gift.total_diamonds else 0
    if (credit.creator_id, credit.diamonds, credit.coins) != (gift.recipient_id, gift.total_diamonds, gift.total_coins):
        out.append(
            found(
                "CREDIT_MISMATCH",
                f"gift: {gift.total_diamonds} diamonds for {gift.total_coins} coins to {gift.recipient_id}; "
                f"credit: {credit.diamonds} for {credit.coins} to {credit.creator_id}",
            )
        )
    elif credit.diamond_transfers > max(expected_transfers, 1):
        out.append(
            found(
                "DOUBLE_CREDIT",
                f"{credit.diamond_transfers} ledger transfers credited {credit.booked_diamonds} diamonds "
                f"for a gift of {gift.total_diamonds}",
            )
        )
    elif (credit.booked_diamonds, credit.booked_share, credit.diamond_transfers) != (
        gift.total_diamonds,
        gift.total_coins - gift.total_diamonds,
        expected_transfers,
    ):
        out.append(
            found(
                "CREDIT_NOT_BOOKED",
                f"the ledger booked {credit.booked_diamonds} diamonds and a platform share of {credit.booked_share} "
                f"for a gift of {gift.total_diamonds} diamonds and {gift.total_coins} coins",
            )
        )
    return out


def to_json(report: Report) -> dict[str, object]:
    """The report as JSON values (times ISO 8601, each discrepancy with its action)."""
    values = asdict(report)
    values["ok"] = report.ok
    for found, discrepancy in zip(values["discrepancies"], report.discrepancies, strict=True):
        found["action"] = discrepancy.action
    values["money"]["fees_paid"] = report.money.paid("fee_minor")
    values["money"]["net_paid"] = report.money.paid("net_minor")
    values["money"]["diamonds_paid_out"] = report.money.paid("diamonds")
    return _isoformat(values)  # type: ignore[return-value]


def _isoformat(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _isoformat(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_isoformat(v) for v in value]
    return value
