"""The gifting service's settings: the shared ones plus its own `GIFTCOIN_GIFTING_*`."""

from __future__ import annotations

from dataclasses import dataclass

from services.runtime.config import (
    ConfigError,
    Constraint,
    Env,
    ServiceSettings,
    between,
    load_service_settings,
    not_empty,
    one_of,
    positive,
    setting,
)
from services.runtime.ledger import MAX_BALANCE

# Test hooks (GIFTCOIN_GIFTING_FAILPOINT): the saga points at which the process may be made to die.
FAILPOINTS = ("after_record", "after_hold", "after_credit", "after_capture", "after_release")
LIMIT_OR_ZERO = Constraint(lambda v: v >= 0, "must not be negative (0: no limit)")


@dataclass(frozen=True, kw_only=True)
class GiftingSettings(ServiceSettings):
    # Where the peers listen; gifting calls them as service:gifting.
    wallet_target: str = setting("GIFTCOIN_GIFTING_WALLET_TARGET", "127.0.0.1:50051", not_empty)
    payout_target: str = setting("GIFTCOIN_GIFTING_PAYOUT_TARGET", "127.0.0.1:50053", not_empty)
    # The creator's default share of a send's coins, in basis points: diamonds = floor(coins * bps / 10000).
    diamond_share_bps: int = setting("GIFTCOIN_GIFTING_DIAMOND_SHARE_BPS", 5000, between(0, 10_000, " basis points"))
    # Coins one sender may spend on gifts per UTC day (a sender's day total stays within MAX_BALANCE).
    daily_spend_limit_coins: int = setting("GIFTCOIN_GIFTING_DAILY_SPEND_LIMIT_COINS", 100_000, between(1, MAX_BALANCE))
    # How long wallet keeps a gift's hold; diamonds are never credited with less life left than the margin.
    hold_ttl_seconds: int = setting("GIFTCOIN_GIFTING_HOLD_TTL_SECONDS", 300, positive)
    hold_safety_margin_seconds: int = setting("GIFTCOIN_GIFTING_HOLD_SAFETY_MARGIN_SECONDS", 60, positive)
    # The longest a gift waits on one step of a peer, retries included, before it is left to recovery.
    step_deadline_ms: int = setting("GIFTCOIN_GIFTING_STEP_DEADLINE_MS", 5000, positive)
    # How long a replica owns a gift it drives; a crashed replica's gifts are taken over after this.
    lease_seconds: int = setting("GIFTCOIN_GIFTING_LEASE_SECONDS", 30, positive)
    # Recovery: how often it looks for unfinished gifts, and the longest it waits between tries of one.
    recovery_interval_ms: int = setting("GIFTCOIN_GIFTING_RECOVERY_INTERVAL_MS", 1000, positive)
    retry_max_seconds: int = setting("GIFTCOIN_GIFTING_RETRY_MAX_SECONDS", 60, positive)
    # SendGift calls that arrive together are served together: at most this many in one batch (the
    # peers' batch limit is 500). The next batch starts once the one in flight is credited, or after
    # this long (a slow peer).
    send_batch_max: int = setting("GIFTCOIN_GIFTING_SEND_BATCH_MAX", 64, between(1, 500, " (the peers' batch limit)"))
    send_batch_stall_ms: int = setting("GIFTCOIN_GIFTING_SEND_BATCH_STALL_MS", 250, positive)
    # How often the live feed looks for gifts completed by other replicas; how often at most a watched
    # target's new events are read and sent to its viewers; how many viewers a replica serves (0: no limit).
    feed_poll_ms: int = setting("GIFTCOIN_GIFTING_FEED_POLL_MS", 100, positive)
    feed_flush_ms: int = setting("GIFTCOIN_GIFTING_FEED_FLUSH_MS", 100, positive)
    feed_max_viewers: int = setting("GIFTCOIN_GIFTING_FEED_MAX_VIEWERS", 20_000, LIMIT_OR_ZERO)
    # The responses per second a replica writes to all its viewers together, at most: the more viewers,
    # the less often each target's new events are sent (lag), never more of the replica's time.
    feed_writes_per_second: int = setting("GIFTCOIN_GIFTING_FEED_WRITES_PER_SECOND", 5000, positive)
    # How often expired request ids are reaped.
    reaper_interval_seconds: int = setting("GIFTCOIN_GIFTING_REAPER_INTERVAL_SECONDS", 600, positive)
    # TEST HOOK, off by default: exit the process abruptly at this saga point (one of FAILPOINTS).
    failpoint: str = setting("GIFTCOIN_GIFTING_FAILPOINT", "", one_of(FAILPOINTS, or_empty=True))


def load_settings(env: Env) -> GiftingSettings:
    s = load_service_settings("gifting", env, GiftingSettings)
    if s.hold_safety_margin_seconds >= s.hold_ttl_seconds:
        raise ConfigError("GIFTCOIN_GIFTING_HOLD_SAFETY_MARGIN_SECONDS must be below GIFTCOIN_GIFTING_HOLD_TTL_SECONDS")
    # A lease must outlive one step's call, or a second replica could take a gift over mid-step.
    if s.lease_seconds * 1000 <= 2 * s.step_deadline_ms:
        raise ConfigError("GIFTCOIN_GIFTING_LEASE_SECONDS must exceed twice GIFTCOIN_GIFTING_STEP_DEADLINE_MS")
    return s
