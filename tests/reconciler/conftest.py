"""The three services in-process (tests/gifting/harness.py), and ways to break their books behind their backs.

Each breaker writes one service's database directly, as a bug, a bad manual fix or a lost write
would: through that service's own tables and its ledger (so the service's own books stay sound and
only the agreement between the services breaks), never through an RPC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from giftcoin.gifting.v1 import gifting_pb2
from giftcoin.payout.v1 import payout_pb2
from giftcoin.wallet.v1 import wallet_pb2
from sqlalchemy import Connection, delete, insert, select, update

from services.payout import model as payout_model
from services.payout import storage as payout_storage
from services.reconciler import RECONCILER, Report, Window, check
from services.runtime.auth import Caller, dev_token
from services.runtime.db import Database
from services.runtime.ledger import Ledger, Posting
from services.wallet import model as wallet_model
from services.wallet import storage as wallet_storage
from services.wallet.receipts import mint_receipt
from tests.gifting.harness import Suite, new_id, refused, start_suite
from tests.support.identity import as_caller, operator, user

OPS = operator("ops")
COMPLETED = gifting_pb2.GIFT_TRANSFER_STATE_COMPLETED


@pytest.fixture
def books(make_database: Callable[[str], str]) -> Iterator[Suite]:
    """The suite, left as the test leaves it (a test that breaks the books checks them itself)."""
    running = start_suite(make_database)
    try:
        yield running
    finally:
        running.close()


def targets(suite: Suite) -> dict[str, str]:
    c = suite.clients
    return {"wallet": c.wallet_target, "gifting": c.gifting_target, "payout": c.payout_target}


def reconcile(
    suite: Suite,
    before: timedelta = timedelta(hours=1),
    in_flight: timedelta = timedelta(minutes=15),
    window: Window | None = None,
    caller: Caller = RECONCILER,
) -> Report:
    """The reconciliation of `window` (default: the last hour of the suite's fake time), through the RPCs."""
    now = suite.clock.now()
    window = window or Window(now - before, now + timedelta(seconds=1))
    return check(targets(suite), window, now, partial(dev_token, caller), in_flight=in_flight)


def write(url: str, work: Callable[[Connection], Any]) -> Any:
    db = Database.from_url(url, pool_size=1)
    try:
        with db.transaction() as conn:
            return work(conn)
    finally:
        db.dispose()


def creator_ready(suite: Suite, creator_id: str) -> None:
    """A registered creator, KYC-verified, paid to a sandbox destination that succeeds."""
    suite.clients.creator(creator_id)
    verify = payout_pb2.VerifyCreatorRequest(
        request_id=new_id(), creator_id=creator_id, kyc_status=payout_pb2.KYC_STATUS_VERIFIED
    )
    suite.clients.payout.VerifyCreator(verify, metadata=as_caller(OPS), timeout=10)
    destination = payout_pb2.SetPayoutDestinationRequest(
        request_id=new_id(),
        destination=payout_pb2.PayoutDestination(
            kind=payout_pb2.DESTINATION_KIND_SANDBOX, account_reference="succeed", currency_code="USD"
        ),
    )
    suite.clients.payout.SetPayoutDestination(destination, metadata=as_caller(user(creator_id)), timeout=10)


def promotion(suite: Suite, promotion_id: str, coins: int, budget: int) -> None:
    now = suite.clock.now()
    request = wallet_pb2.CreatePromotionRequest(
        request_id=new_id(), promotion_id=promotion_id, name=promotion_id, coins_per_claim=coins, budget=budget
    )
    request.start_time.FromDatetime(now - timedelta(hours=1))
    request.end_time.FromDatetime(now + timedelta(days=1))
    suite.clients.wallet.CreatePromotion(request, metadata=as_caller(OPS), timeout=10)


@dataclass
class Story:
    """What the story's calls did, as their answers said."""

    purchases: list[wallet_pb2.Purchase] = field(default_factory=list)
    completed: list[gifting_pb2.GiftTransfer] = field(default_factory=list)
    failed_after_hold: str = ""  # a gift whose hold was made and released
    failed_without_hold: str = ""
    refund: wallet_pb2.RefundPurchaseResponse | None = None
    payout: payout_pb2.Payout | None = None
    granted: int = 0
    promotion_budget: int = 0


def buy(suite: Suite, user_id: str, package_id: str, store_transaction_id: str) -> wallet_pb2.Purchase:
    receipt = wallet_pb2.Receipt(store="sandbox", payload=mint_receipt(package_id, store_transaction_id))
    request = wallet_pb2.PurchaseCoinsRequest(request_id=new_id(), package_id=package_id, receipt=receipt)
    return suite.clients.wallet.PurchaseCoins(request, metadata=as_caller(user(user_id)), timeout=10).purchase


def story(suite: Suite) -> Story:
    """Viewers buy and claim coins, send gifts (three complete, two fail), one purchase is refunded,
    and the creator is paid out."""
    c, s = suite.clients, Story()
    for viewer in ("ana", "ben", "dan"):
        c.viewer(viewer, package_id="")
    s.purchases += [buy(suite, "ana", "coins_700", "ana-1"), buy(suite, "dan", "coins_70", "dan-1")]
    s.purchases += [buy(suite, "ben", "coins_17500", f"ben-{n}") for n in (1, 2)]
    s.promotion_budget = 1000
    promotion(suite, "welcome", coins=100, budget=s.promotion_budget)
    claim = wallet_pb2.ClaimPromotionRequest(request_id=new_id(), promotion_id="welcome")
    s.granted = c.wallet.ClaimPromotion(claim, metadata=as_caller(user("ana")), timeout=10).coins_granted
    creator_ready(suite, "cara")
    s.completed += [
        c.send("ana", gift_id="doughnut", recipient_id="cara"),
        c.send("ana", gift_id="rose", recipient_id="cara"),  # 1 coin: no diamonds, all the platform's share
        c.send("ben", gift_id="lion", recipient_id="cara"),
    ]
    assert {t.state for t in s.completed} == {COMPLETED}
    cannot = refused(lambda: c.send("ana", gift_id="doughnut", recipient_id="nobody"))
    assert cannot.reason == "RECIPIENT_CANNOT_RECEIVE"
    s.failed_after_hold = cannot.metadata["transfer_id"]
    poor = refused(lambda: c.send("dan", gift_id="universe", recipient_id="cara"))
    assert poor.reason == "INSUFFICIENT_FUNDS"
    s.failed_without_hold = poor.metadata["transfer_id"]
    refund = wallet_pb2.RefundPurchaseRequest(
        request_id=new_id(), store="sandbox", store_transaction_id="dan-1", kind=wallet_pb2.REFUND_KIND_REFUND
    )
    s.refund = c.wallet.RefundPurchase(refund, metadata=as_caller(OPS), timeout=10)
    request = payout_pb2.RequestPayoutRequest(request_id=new_id(), diamonds=14000)  # some diamonds stay
    s.payout = c.payout.RequestPayout(request, metadata=as_caller(user("cara")), timeout=10).payout
    (processor, _reaper) = suite.payout_server.app.loops
    processor.step()  # the payout processor's pass: the sandbox pays
    return s


# --- behind the services' backs ----------------------------------------------------------------------


def rename_hold_behind_wallets_back(suite: Suite, gift_id: str, new_gift_id: str) -> None:
    """Make a hold name a gift that gifting never recorded."""
    h = wallet_storage.holds
    write(
        suite.wallet_url, lambda conn: conn.execute(update(h).where(h.c.gift_id == gift_id).values(gift_id=new_gift_id))
    )


def capture_behind_wallets_back(suite: Suite, gift_id: str) -> str:
    """Mark a gift's hold captured without spending through the wallet; the hold's id."""
    h = wallet_storage.holds

    def capture(conn: Connection) -> str:
        conn.execute(update(h).where(h.c.gift_id == gift_id).values(state=wallet_model.CAPTURED))
        return str(conn.execute(select(h.c.hold_id).where(h.c.gift_id == gift_id)).scalar_one())

    return str(write(suite.wallet_url, capture))


def credit_behind_payouts_back(suite: Suite, gift_id: str, creator_id: str, diamonds: int, coins: int) -> str:
    """A credit record and its ledger transfer for a gift gifting never had credited; the credit's id."""
    credit_id, now = f"cr_{new_id()[:8]}", suite.clock.now()

    def credit(conn: Connection) -> None:
        conn.execute(
            insert(payout_storage.diamond_credits).values(
                credit_id=credit_id,
                gift_id=gift_id,
                creator_id=creator_id,
                diamonds=diamonds,
                coins=coins,
                promotional_coins=0,
                transfer_id=f"credit:{credit_id}",
                created_at=now,
            )
        )
        Ledger(payout_storage.ledger, conn).post(
            "gift_credit",
            gift_id,
            [
                Posting(payout_model.DIAMONDS_ISSUED, -diamonds),
                Posting(payout_model.creator_diamonds(creator_id), diamonds),
                Posting(payout_model.GIFT_COINS, -coins),
                Posting(payout_model.CREATORS_SHARE, diamonds),
                Posting(payout_model.PLATFORM_SHARE, coins - diamonds),
            ],
            now,
            transfer_id=f"credit:{credit_id}",
        )

    write(suite.payout_url, credit)
    return credit_id


def credit_again_behind_payouts_back(suite: Suite, gift_id: str, creator_id: str, diamonds: int) -> None:
    """A second ledger transfer crediting a gift's diamonds (its credit record stays the one)."""

    def credit(conn: Connection) -> None:
        Ledger(payout_storage.ledger, conn).post(
            "gift_credit",
            gift_id,
            [
                Posting(payout_model.DIAMONDS_ISSUED, -diamonds),
                Posting(payout_model.creator_diamonds(creator_id), diamonds),
            ],
            suite.clock.now(),
        )

    write(suite.payout_url, credit)


def delete_credit_behind_payouts_back(suite: Suite, gift_id: str) -> str:
    """Remove a gift's credit, its ledger transfer and the diamonds it gave; the credit's id."""
    c, t, e, a = (
        payout_storage.diamond_credits,
        payout_storage.ledger.transfers,
        payout_storage.ledger.entries,
        payout_storage.ledger.accounts,
    )

    def remove(conn: Connection) -> str:
        credit = conn.execute(select(c).where(c.c.gift_id == gift_id)).one()
        conn.execute(delete(e).where(e.c.transfer_id == credit.transfer_id))
        conn.execute(delete(t).where(t.c.id == credit.transfer_id))
        conn.execute(delete(c).where(c.c.gift_id == gift_id))
        account = payout_model.creator_diamonds(credit.creator_id)
        conn.execute(update(a).where(a.c.code == account).values(balance=a.c.balance - credit.diamonds))
        return str(credit.credit_id)

    return str(write(suite.payout_url, remove))
