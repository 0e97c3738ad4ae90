"""What gifting's domain speaks: gifts, transfers and feed events as plain records, their states and
the saga's steps, the saga's policy, and the one rounding of gifting.

Storage returns these, the domain and the saga decide over them, the servicer translates them into
protobuf. Nothing here knows a database, a peer or gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import NamedTuple

# Gift states, transfer states and saga steps as stored.
ACTIVE, RETIRED = "active", "retired"
PENDING, COMPLETED, FAILED = "pending", "completed", "failed"
# recorded -> completed, or recorded -> failing -> failed (services/gifting/saga.py). Rows of earlier
# versions may stand at held, crediting or credited: the saga drives them on.
RECORDED, HELD, CREDITING, CREDITED, FAILING = "recorded", "held", "crediting", "credited", "failing"
STEPS = (RECORDED, HELD, CREDITING, CREDITED, FAILING, COMPLETED, FAILED)

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


# --- the saga's policy ---------------------------------------------------------------------------


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


def credit_deadline(recorded_at: datetime, policy: SagaPolicy) -> datetime:
    """The credit deadline of a gift recorded at `recorded_at`: a hold made once it was recorded
    outlives it by the safety margin (services/gifting/saga.py: the expiring hold)."""
    return recorded_at + timedelta(seconds=policy.hold_ttl_seconds - policy.hold_safety_margin_seconds)


# --- values --------------------------------------------------------------------------------------


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
class LeaderboardEntry:
    rank: int
    user_id: str
    coins: int
    gifts: int


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GiftRecord:
    """A gift with its current version."""

    gift_id: str
    name: str
    state: str
    version: int
    coin_price: int
    diamonds: int | None
    share_bps: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TransferRecord:
    transfer_id: str
    sender_id: str
    request_id: str
    fingerprint: str
    recipient_id: str
    target_kind: str
    target_id: str
    gift_id: str
    gift_version: int
    gift_name: str
    quantity: int
    unit_coin_price: int
    total_coins: int
    total_diamonds: int
    promotional_coins: int | None
    credit_deadline: datetime | None
    state: str
    step: str
    failure_reason: str
    failure_error: str | None
    hold_expire_at: datetime | None
    spend_day: date
    trace_context: str
    lease_owner: str
    lease_until: datetime | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @property
    def target_key(self) -> str:
        return Target(self.target_kind, self.target_id).key


@dataclass(frozen=True)
class Page:
    transfers: list[TransferRecord]
    next_page_token: str


@dataclass(frozen=True)
class FeedEventRecord:
    target_key: str
    sequence: int
    combo_count: int
    transfer: TransferRecord


class Previous(NamedTuple):
    """A target's latest event, as the next one continues its combo."""

    sender_id: str
    gift_id: str
    combo: int


class Numbering(NamedTuple):
    """Where a target's new events go: the first number they take, and the event before them."""

    first: int
    previous: Previous | None


@dataclass(frozen=True)
class LeaderRow:
    user_id: str
    coins: int
    gifts: int
