"""The gifting service's settings: the shared ones plus its own `GIFTCOIN_GIFTING_*`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from services.runtime.config import ConfigError, Env, ServiceSettings, load_service_settings
from services.runtime.ledger import MAX_BALANCE

# Test hooks (GIFTCOIN_GIFTING_FAILPOINT): the saga points at which the process may be made to die.
FAILPOINTS = ("after_record", "after_hold", "after_credit", "after_capture", "after_release")


@dataclass(frozen=True)
class GiftingSettings(ServiceSettings):
    # Where the peers listen; gifting calls them as service:gifting.
    wallet_target: str = "127.0.0.1:50051"
    payout_target: str = "127.0.0.1:50053"
    # The creator's default share of a send's coins, in basis points: diamonds = floor(coins * bps / 10000).
    diamond_share_bps: int = 5000
    # Coins one sender may spend on gifts per UTC day.
    daily_spend_limit_coins: int = 100_000
    # How long wallet keeps a gift's hold; diamonds are never credited with less life left than the margin.
    hold_ttl_seconds: int = 300
    hold_safety_margin_seconds: int = 60
    # The longest a gift waits on one step of a peer, retries included, before it is left to recovery.
    step_deadline_ms: int = 5000
    # How long a replica owns a gift it drives; a crashed replica's gifts are taken over after this.
    lease_seconds: int = 30
    # Recovery: how often it looks for unfinished gifts, and the longest it waits between tries of one.
    recovery_interval_ms: int = 1000
    retry_max_seconds: int = 60
    # SendGift calls that arrive together are served together: at most this many in one batch. The
    # next batch starts once the one in flight is credited, or after this long (a slow peer).
    send_batch_max: int = 64
    send_batch_stall_ms: int = 250
    # How often the live feed looks for gifts completed by other replicas; how often at most a watched
    # target's new events are read and sent to its viewers; how many viewers a replica serves (0: no limit).
    feed_poll_ms: int = 100
    feed_flush_ms: int = 100
    feed_max_viewers: int = 20_000
    # The responses per second a replica writes to all its viewers together, at most: the more viewers,
    # the less often each target's new events are sent (lag), never more of the replica's time.
    feed_writes_per_second: int = 5000
    # How often expired request ids are reaped.
    reaper_interval_seconds: int = 600
    # TEST HOOK, off by default: exit the process abruptly at this saga point (one of FAILPOINTS).
    failpoint: str = ""


def load_settings(env: Env) -> GiftingSettings:
    base = load_service_settings("gifting", env)
    settings = GiftingSettings(
        **{f.name: getattr(base, f.name) for f in fields(ServiceSettings)},
        wallet_target=env.text("GIFTCOIN_GIFTING_WALLET_TARGET", "127.0.0.1:50051"),
        payout_target=env.text("GIFTCOIN_GIFTING_PAYOUT_TARGET", "127.0.0.1:50053"),
        diamond_share_bps=env.integer("GIFTCOIN_GIFTING_DIAMOND_SHARE_BPS", 5000),
        daily_spend_limit_coins=env.integer("GIFTCOIN_GIFTING_DAILY_SPEND_LIMIT_COINS", 100_000),
        hold_ttl_seconds=env.integer("GIFTCOIN_GIFTING_HOLD_TTL_SECONDS", 300),
        hold_safety_margin_seconds=env.integer("GIFTCOIN_GIFTING_HOLD_SAFETY_MARGIN_SECONDS", 60),
        step_deadline_ms=env.integer("GIFTCOIN_GIFTING_STEP_DEADLINE_MS", 5000),
        lease_seconds=env.integer("GIFTCOIN_GIFTING_LEASE_SECONDS", 30),
        recovery_interval_ms=env.integer("GIFTCOIN_GIFTING_RECOVERY_INTERVAL_MS", 1000),
        retry_max_seconds=env.integer("GIFTCOIN_GIFTING_RETRY_MAX_SECONDS", 60),
        send_batch_max=env.integer("GIFTCOIN_GIFTING_SEND_BATCH_MAX", 64),
        send_batch_stall_ms=env.integer("GIFTCOIN_GIFTING_SEND_BATCH_STALL_MS", 250),
        feed_poll_ms=env.integer("GIFTCOIN_GIFTING_FEED_POLL_MS", 100),
        feed_flush_ms=env.integer("GIFTCOIN_GIFTING_FEED_FLUSH_MS", 100),
        feed_max_viewers=env.integer("GIFTCOIN_GIFTING_FEED_MAX_VIEWERS", 20_000),
        feed_writes_per_second=env.integer("GIFTCOIN_GIFTING_FEED_WRITES_PER_SECOND", 5000),
        reaper_interval_seconds=env.integer("GIFTCOIN_GIFTING_REAPER_INTERVAL_SECONDS", 600),
        failpoint=env.text("GIFTCOIN_GIFTING_FAILPOINT", ""),
    )
    _check(settings)
    return settings


def _check(s: GiftingSettings) -> None:
    if not s.wallet_target or not s.payout_target:
        raise ConfigError("GIFTCOIN_GIFTING_WALLET_TARGET and GIFTCOIN_GIFTING_PAYOUT_TARGET must not be empty")
    if not 0 <= s.diamond_share_bps <= 10_000:
        raise ConfigError("GIFTCOIN_GIFTING_DIAMOND_SHARE_BPS must be between 0 and 10000 basis points")
    if not 0 < s.daily_spend_limit_coins <= MAX_BALANCE:  # a sender's day total stays within it
        raise ConfigError(f"GIFTCOIN_GIFTING_DAILY_SPEND_LIMIT_COINS must be from 1 to {MAX_BALANCE}")
    if not 0 < s.hold_safety_margin_seconds < s.hold_ttl_seconds:
        raise ConfigError(
            "GIFTCOIN_GIFTING_HOLD_SAFETY_MARGIN_SECONDS must be positive and below GIFTCOIN_GIFTING_HOLD_TTL_SECONDS"
        )
    if s.step_deadline_ms <= 0:
        raise ConfigError("GIFTCOIN_GIFTING_STEP_DEADLINE_MS must be positive")
    # A lease must outlive one step's call, or a second replica could take a gift over mid-step.
    if s.lease_seconds * 1000 <= 2 * s.step_deadline_ms:
        raise ConfigError("GIFTCOIN_GIFTING_LEASE_SECONDS must exceed twice GIFTCOIN_GIFTING_STEP_DEADLINE_MS")
    if not 1 <= s.send_batch_max <= 500 or s.send_batch_stall_ms <= 0:
        raise ConfigError(
            "GIFTCOIN_GIFTING_SEND_BATCH_MAX must be between 1 and 500 (the peers' batch limit) and "
            "GIFTCOIN_GIFTING_SEND_BATCH_STALL_MS positive"
        )
    if s.recovery_interval_ms <= 0 or s.retry_max_seconds <= 0 or s.feed_poll_ms <= 0 or s.feed_flush_ms <= 0:
        raise ConfigError("the gifting recovery, retry and feed intervals must be positive")
    if s.feed_max_viewers < 0 or s.feed_writes_per_second <= 0:
        raise ConfigError(
            "GIFTCOIN_GIFTING_FEED_MAX_VIEWERS must not be negative (0: no limit) and "
            "GIFTCOIN_GIFTING_FEED_WRITES_PER_SECOND must be positive"
        )
    if s.reaper_interval_seconds <= 0:
        raise ConfigError("GIFTCOIN_GIFTING_REAPER_INTERVAL_SECONDS must be positive")
    if s.failpoint and s.failpoint not in FAILPOINTS:
        raise ConfigError(f"GIFTCOIN_GIFTING_FAILPOINT must be one of {', '.join(FAILPOINTS)} (or unset)")
