"""The metrics a platform scrapes: each service's Prometheus endpoint after `make demo`'s story
(buy coins, claim a promotion, send a Rose combo and a Lion to a watched stream, a payout paid, a
Universe refused), with the values the story implies, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import grpc
from giftcoin.gifting.v1 import gifting_pb2, gifting_pb2_grpc

from services.giftctl.demo import STREAM
from services.giftctl.session import SERVICES
from services.gifting.model import creator_diamonds
from services.reconciler import metrics as reconciler_metrics
from tests.deploy import kube
from tests.observability.conftest import StorySuite
from tests.support.identity import as_caller, user

DURATION = "rpc_server_call_duration_seconds"
ROSES, LION = 10 * 1, 29_999  # the story's two completed gifts, in coins
SHARE_BPS = 5000
PURCHASED = 700 + 17_500 + 17_500  # Ana's package, Ben's two
DOC = kube.ROOT / "docs" / "observability.md"


def method(service: str, name: str) -> str:
    return f"giftcoin.{service}.v1.{service.capitalize()}Service/{name}"


def test_red_metrics_count_every_call_with_its_status_code_and_error_type(story_suite: StorySuite) -> None:
    scraped = story_suite.scrape_all()
    gifting, wallet, payout = scraped["gifting"], scraped["wallet"], scraped["payout"]
    send = method("gifting", "SendGift")
    assert gifting.value(f"{DURATION}_count", rpc_method=send, rpc_response_status_code="OK") == 2
    # The Universe Ana cannot afford: refused with its reason, an answer and not a fault.
    assert (
        gifting.value(
            f"{DURATION}_count",
            rpc_method=send,
            rpc_response_status_code="FAILED_PRECONDITION",
            error_type="INSUFFICIENT_FUNDS",
        )
        == 1
    )
    assert gifting.labels(f"{DURATION}_count", "rpc_system_name") == {"grpc"}
    # Every bucket series ends with +Inf, equal to the count: a histogram Prometheus can quantile.
    assert gifting.value(f"{DURATION}_bucket", rpc_method=send, le="+Inf") == 3
    # The same receipt twice: the second is refused (RECEIPT_ALREADY_USED), both counted.
    buy = method("wallet", "PurchaseCoins")
    assert wallet.value(f"{DURATION}_count", rpc_method=buy, rpc_response_status_code="OK") == 3
    assert wallet.value(f"{DURATION}_count", rpc_method=buy, error_type="RECEIPT_ALREADY_USED") == 1
    # Gifting's peers served its batch calls: two gifts went through wallet and payout.
    assert wallet.value(f"{DURATION}_count", rpc_method=method("wallet", "BatchHoldCoins")) >= 1
    assert payout.value(f"{DURATION}_count", rpc_method=method("payout", "BatchCreditDiamonds")) >= 1
    assert (
        payout.value(f"{DURATION}_count", rpc_method=method("payout", "RequestPayout"), rpc_response_status_code="OK")
        == 1
    )
    for service in SERVICES:  # nothing in the story is a fault (a viewer that stops watching cancels its stream)
        assert scraped[service].labels(f"{DURATION}_count", "rpc_response_status_code") <= {
            "OK",
            "FAILED_PRECONDITION",
            "ALREADY_EXISTS",
            "CANCELLED",
        }, service


def test_the_saga_s_outcomes_steps_and_value_moved(story_suite: StorySuite) -> None:
    gifting, wallet = story_suite.scrape("gifting"), story_suite.scrape("wallet")
    outcomes = "giftcoin_gifting_saga_outcomes_total"
    assert gifting.value(outcomes, giftcoin_gift_state="completed") == 2
    assert gifting.value(outcomes, giftcoin_gift_state="failed", error_type="INSUFFICIENT_FUNDS") == 1
    assert gifting.value("giftcoin_coins_moved_total", giftcoin_movement_kind="gift") == ROSES + LION
    assert gifting.value("giftcoin_diamonds_moved_total", giftcoin_movement_kind="gift") == creator_diamonds(
        ROSES, SHARE_BPS
    ) + creator_diamonds(LION, SHARE_BPS)
    steps = "giftcoin_gifting_saga_step_duration_seconds_count"
    assert {"record", "hold", "credit", "capture", "complete"} <= gifting.labels(steps, "giftcoin_saga_step")
    assert gifting.value(steps, giftcoin_saga_step="capture") >= 1
    # The wallet's ledger agrees: what was held was captured, and nothing is held any more.
    assert wallet.value("giftcoin_coins_moved_total", giftcoin_movement_kind="hold") == ROSES + LION
    assert wallet.value("giftcoin_coins_moved_total", giftcoin_movement_kind="capture") == ROSES + LION
    assert wallet.value("giftcoin_coins_moved_total", giftcoin_movement_kind="purchase") == PURCHASED
    assert wallet.value("giftcoin_wallet_holds_active") == 0
    assert wallet.value("giftcoin_wallet_coins_held") == 0
    assert gifting.value("giftcoin_gifting_gifts_unfinished") == 0
    assert gifting.value("giftcoin_gifting_gifts_oldest_unfinished_age_seconds") == 0


def test_payouts_queues_and_database_pools(story_suite: StorySuite) -> None:
    scraped = story_suite.scrape_all()
    assert scraped["payout"].value("giftcoin_payout_outcomes_total", giftcoin_payout_state="paid") == 1
    assert scraped["payout"].value("giftcoin_payout_payouts_in_flight") == 0
    assert scraped["gifting"].value("giftcoin_batcher_queue_depth", giftcoin_batcher_name="gifting-send") == 0
    for service in SERVICES:
        pool = scraped[service]
        (name,) = pool.labels("db_client_connection_max", "db_client_connection_pool_name")
        assert pool.value("db_client_connection_max") == 2 * 16  # GIFTCOIN_DATABASE_POOL_SIZE, plus as many overflow
        used = pool.value("db_client_connection_count", db_client_connection_state="used")
        idle = pool.value("db_client_connection_count", db_client_connection_state="idle")
        assert idle >= 1 and 0 <= used <= 32, (service, name)
        # The resource names the service (Prometheus' target_info, joined on job and instance).
        assert pool.labels("target_info", "service_name") == {f"giftcoin-{service}"}


def test_the_live_feed_counts_its_viewers_and_the_lag_of_what_it_delivers(story_suite: StorySuite) -> None:
    before = story_suite.scrape("gifting")
    assert before.value("giftcoin_gifting_feed_lag_seconds_count") >= 1  # the story's watcher saw its gifts
    assert before.value("giftcoin_gifting_feed_lag_seconds_bucket", le="+Inf") == before.value(
        "giftcoin_gifting_feed_lag_seconds_count"
    )
    # The story's watcher has gone (its stream ends within a second of its cancel).
    assert _eventually(lambda: story_suite.scrape("gifting").value("giftcoin_gifting_feed_viewers") == 0)
    with grpc.insecure_channel(story_suite.suite.targets["gifting"]) as channel:
        stub = gifting_pb2_grpc.GiftingServiceStub(channel)
        target = gifting_pb2.Target(kind=gifting_pb2.TARGET_KIND_LIVE_STREAM, id=STREAM)
        watch = stub.WatchGifts(gifting_pb2.WatchGiftsRequest(target=target), metadata=as_caller(user("eve")))
        watch.initial_metadata()  # subscribed
        assert _eventually(lambda: story_suite.scrape("gifting").value("giftcoin_gifting_feed_viewers") == 1)
        watch.cancel()
    assert _eventually(lambda: story_suite.scrape("gifting").value("giftcoin_gifting_feed_viewers") == 0)


def test_every_documented_series_is_exported(story_suite: StorySuite) -> None:
    exported = set().union(*(s.names() for s in story_suite.scrape_all().values()))
    documented = documented_series()
    assert len(documented) >= 15
    missing = {name for name in documented if not {name, f"{name}_count", f"{name}_total"} & exported}
    # The reconciler's are the CronJob's, not the services' (tests/reconciler/test_job.py checks them).
    missing -= set(reconciler_metrics.PROMETHEUS_NAMES)
    assert not missing, f"docs/observability.md names series no service exports: {sorted(missing)}"


def documented_series() -> set[str]:
    """The Prometheus names in docs/observability.md's table (its second column)."""
    names = set()
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and (found := re.fullmatch(r"`([a-z_:]+)`", cells[1])):
            names.add(found.group(1))
    return names


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
