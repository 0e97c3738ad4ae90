"""The wallet's books over a window (SummarizeBooks, the reconciler's read): what the stores charged,
what they gave back and took back again, the coins issued, and the coins outstanding, on SQLite and
PostgreSQL. The App Store's refunds and reversals arrive as its signed notifications."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from giftcoin.wallet.v1 import wallet_pb2

from services.runtime.clock import FakeClock
from services.runtime.timestamps import to_timestamp
from tests.support.app_store import AppleChain
from tests.support.identity import as_caller, operator
from tests.wallet.test_app_store import AppStore, _start

OPS = as_caller(operator("finance"))


@pytest.fixture
def apple(wallet_url: str, clock: FakeClock, tmp_path: Path) -> Iterator[AppStore]:
    yield from _start(wallet_url, clock, tmp_path, AppleChain.make(clock.now()))


def books(apple: AppStore, start_hours: float = -1, end_hours: float = 1) -> wallet_pb2.SummarizeBooksResponse:
    now = apple.now
    request = wallet_pb2.SummarizeBooksRequest(
        start_time=to_timestamp(now + timedelta(hours=start_hours)),
        end_time=to_timestamp(now + timedelta(hours=end_hours)),
    )
    return apple.wallet.stub.SummarizeBooks(request, metadata=OPS)


def test_the_books_put_the_stores_takings_refunds_and_reversals_beside_the_coins(apple: AppStore) -> None:
    for user_id in ("alice", "bob"):
        apple.wallet.open_wallet(user_id)
    alices, bobs = apple.transaction("alice"), apple.transaction("bob")
    bought = [apple.buy(alices, "alice").purchase, apple.buy(bobs, "bob").purchase]
    sandbox = apple.wallet.buy("bob", "coins_70").purchase
    assert apple.refund(alices, timedelta(minutes=5)) == "applied"
    assert apple.refund(bobs, timedelta(minutes=5)) == "applied"
    assert apple.refund(alices, timedelta(minutes=10), kind="REFUND_REVERSED") == "applied"

    summary = books(apple)
    takings = {(t.store, t.amount.currency_code): t for t in summary.takings}
    app_store = takings[("app_store", "USD")]
    assert (app_store.purchases, app_store.amount.amount_minor, app_store.coins) == (
        2,
        sum(p.price.amount_minor for p in bought),
        sum(p.coins for p in bought),
    )
    assert takings[("sandbox", "USD")].amount.amount_minor == sandbox.price.amount_minor
    [refunds] = summary.refunds  # both were refunded while their coins were there: taken back, no debt
    assert (refunds.kind, refunds.refunds, refunds.amount.amount_minor) == (
        wallet_pb2.REFUND_KIND_REFUND,
        2,
        sum(p.price.amount_minor for p in bought),
    )
    assert (refunds.coins_reclaimed, refunds.debt_added) == (sum(p.coins for p in bought), 0)
    [reversal] = summary.reversals
    assert (reversal.reversals, reversal.amount.amount_minor, reversal.coins) == (
        1,
        bought[0].price.amount_minor,
        bought[0].coins,
    )
    assert summary.coins_purchased == sum(p.coins for p in bought) + sandbox.coins
    assert summary.coins_outstanding == sum(apple.wallet.get(u).balance.total for u in ("alice", "bob"))
    assert summary.coins_held == 0
    # A window before all of it: nothing taken, nothing given back; the coins outstanding are still now's.
    earlier = books(apple, start_hours=-3, end_hours=-2)
    assert (list(earlier.takings), list(earlier.refunds), list(earlier.reversals)) == ([], [], [])
    assert earlier.coins_outstanding == summary.coins_outstanding
