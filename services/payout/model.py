"""What the payout service speaks: its records and states, ledger account names, the payout arithmetic,
the provider's interface and the domain's answers. Plain data and pure functions; no database, no gRPC.

The ledger bookings these accounts carry are drawn in domain.py's header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

# --- states and kinds, as stored ---------------------------------------------------------------------

# Payout states; the in-flight ones hold the creator's single in-flight slot.
REQUESTED, PROCESSING, PAID, FAILED = "requested", "processing", "paid", "failed"
IN_FLIGHT = (REQUESTED, PROCESSING)

# Creator KYC states and destination kinds.
KYC_UNVERIFIED, KYC_VERIFIED, KYC_REJECTED = "unverified", "verified", "rejected"
BANK_ACCOUNT, PAYPAL, SANDBOX = "bank_account", "paypal", "sandbox"  # sandbox: the sandbox provider's own

# Ledger transfer kinds: a gift's credit, and (GIFT_SHARE) the platform's share of a gift credited before
# payout booked the share with the credit, booked by migration 0002; a payout's diamonds taken, returned
# and paid.
GIFT_CREDIT, GIFT_SHARE = "gift_credit", "gift_share"
GIFT_BOOKINGS = (GIFT_CREDIT, GIFT_SHARE)
PAYOUT = "payout"
PAYOUT_RETURNED = "payout_returned"
PAYOUT_PAID = "payout_paid"


# --- ledger accounts ---------------------------------------------------------------------------------

DIAMOND = "diamond"
DIAMONDS_ISSUED = "platform:diamonds_issued"  # where credited diamonds come from (goes negative)
DIAMONDS_REDEEMED = "platform:diamonds_redeemed"  # diamonds of paid payouts end here

# The coins of credited gifts, as payout books them with each credit (credits.py's header): the coins
# the gifts cost (negative), split into the creators' share (the diamonds: a diamond is the creator's
# share of one coin) and the platform's share. How many of them were promotional is wallet's ledger's
# to tell (and the credit's record's).
COIN = "coin"
GIFT_COINS = "platform:gift_coins"
CREATORS_SHARE = "platform:gift_coins:creators_share"
PLATFORM_SHARE = "platform:gift_coins:platform_share"


def creator_diamonds(creator_id: str) -> str:
    """The creator's diamond balance (holder: never negative)."""
    return f"creator:{creator_id}:diamonds"


def creator_diamonds_in_payout(creator_id: str) -> str:
    """Diamonds of the creator's payouts that are requested or processing (holder)."""
    return f"creator:{creator_id}:diamonds_in_payout"


def cash_issued(currency: str) -> str:
    """The platform's cash liability for redeemed diamonds: the gross of every paid payout (negative)."""
    return f"platform:cash_issued:{currency}"


def cash_paid_out(currency: str) -> str:
    """Net cash sent to creators."""
    return f"platform:cash_paid_out:{currency}"


def fee_revenue(currency: str) -> str:
    """The platform's fee on payouts."""
    return f"platform:payout_fee_revenue:{currency}"


# --- records, as stored --------------------------------------------------------------------------------


class Duplicate(Exception):
    """A record that the database holds once was added again (storage raises it on a unique key)."""


@dataclass(frozen=True)
class CreatorRecord:
    creator_id: str
    date_of_birth: date
    country_code: str
    gifting_enabled: bool
    kyc_status: str
    destination_kind: str | None
    destination_reference: str | None
    destination_currency: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class CreditRecord:
    credit_id: str
    gift_id: str
    creator_id: str
    diamonds: int
    coins: int
    promotional_coins: int
    transfer_id: str
    created_at: datetime


@dataclass(frozen=True)
class PayoutRecord:
    payout_id: str
    creator_id: str
    diamonds: int
    gross: int
    fee: int
    net: int
    currency: str
    state: str
    destination_kind: str
    destination_reference: str
    destination_currency: str
    provider_reference: str
    failure_reason: str
    submissions: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DiamondEntry:
    """One entry on a creator's diamond account, with its transfer's kind and reference."""

    entry_id: int
    transfer_id: str
    kind: str
    reference: str
    amount: int
    created_at: datetime


@dataclass(frozen=True)
class BookedCreditRecord:
    """A credit and what the ledger booked for its gift: diamonds to the creator, the platform's share,
    and how many transfers moved diamonds for it."""

    credit: CreditRecord
    booked_diamonds: int
    booked_share: int
    diamond_transfers: int


@dataclass(frozen=True)
class CreditTotals:
    """Credits made in a window: how many, their diamonds, coins, promotional coins, and the platform's
    share (coins - diamonds)."""

    credits: int
    diamonds: int
    coins: int
    promotional_coins: int
    platform_share: int


@dataclass(frozen=True)
class PayoutTotalsRow:
    state: str
    currency: str
    payouts: int
    diamonds: int
    gross: int
    fee: int
    net: int


# --- the arithmetic, written once ------------------------------------------------------------------

BASIS_POINTS = 10_000


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


# --- the payout provider ---------------------------------------------------------------------------------

# Provider-side payment states.
PROVIDER_PENDING, PROVIDER_PAID, PROVIDER_FAILED = "pending", "paid", "failed"


@dataclass(frozen=True)
class ProviderPayment:
    """What the processor asks a provider to pay."""

    idempotency_key: str
    beneficiary: str
    destination_kind: str
    destination_reference: str
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class ProviderResult:
    provider_reference: str
    state: str  # pending | paid | failed
    failure_reason: str = ""


class PayoutProvider(Protocol):
    """Pays creators. Idempotent by the key the payout service sends (the payout id): submitting the
    same key again never pays again, it reports the payment already made. That is what lets the
    processor retry after a crash at any point without paying twice."""

    def submit(self, payment: ProviderPayment) -> ProviderResult:
        """Pay once per idempotency key; a repeated key returns the existing payment's state."""
        ...

    def status(self, idempotency_key: str) -> ProviderResult | None:
        """The payment made under this key, or None if the provider never received it."""
        ...


MAX_SANDBOX_DELAY_SECONDS = 86_400
_DELAY = re.compile(r"^delay:([0-9]{1,6})$")


@dataclass(frozen=True)
class SandboxBehaviour:
    outcome: str  # succeed | fail
    delay_seconds: int = 0


def sandbox_behaviour(account_reference: str) -> SandboxBehaviour | None:
    """What a sandbox destination's account reference asks for; None if it is not one we know."""
    if account_reference == "succeed":
        return SandboxBehaviour("succeed")
    if account_reference == "fail":
        return SandboxBehaviour("fail")
    match = _DELAY.match(account_reference)
    if match and int(match.group(1)) <= MAX_SANDBOX_DELAY_SECONDS:
        return SandboxBehaviour("succeed", int(match.group(1)))
    return None


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
