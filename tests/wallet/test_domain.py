"""The wallet's rules driven directly (`Wallets` over storage's UnitOfWork), without gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest

from services.runtime.errors import DomainError
from services.wallet.domain import Catalogue
from services.wallet.model import CAPTURED, EXPIRED, PromotionRecord, WalletStatus
from services.wallet.settings import parse_packages
from tests.wallet.conftest import Books


def refused(call: Callable[[], object]) -> DomainError:
    with pytest.raises(DomainError) as error:
        call()
    return error.value


def test_holds_take_promotional_coins_first(books: Books) -> None:
    books.open("alice")
    books.buy("alice", "coins_70")
    now = books.clock.now()
    books.do(
        books.wallets.create_promotion,
        PromotionRecord("welcome", "Welcome", 20, 100, now, now.replace(year=now.year + 1)),
    )
    books.do(books.wallets.claim_promotion, "alice", "welcome")
    hold = books.do(books.wallets.hold, "gift-1", "alice", 30, 0)
    assert (hold.amount, hold.promotional_amount) == (30, 20)
    wallet = books.wallet("alice")
    assert (wallet.balance.total, wallet.balance.held, wallet.balance.promotional) == (90, 30, 20)
    books.do(books.wallets.capture, "gift-1")
    wallet = books.wallet("alice")
    assert (wallet.balance.total, wallet.balance.promotional, wallet.balance.purchased) == (60, 0, 60)
    assert books.do(books.wallets.promotion_remaining, "welcome") == 80


def test_the_expired_hold_rule_spends_what_is_there_and_owes_the_rest(books: Books) -> None:
    books.open("alice")
    books.buy("alice", "coins_70")
    books.do(books.wallets.hold, "gift-late", "alice", 70, 5)
    books.clock.advance(seconds=5)
    assert books.wallets.expire_due_holds(books.transactions) == 1
    assert books.wallets.expire_due_holds(books.transactions) == 0
    books.do(books.wallets.hold, "gift-other", "alice", 45, 0)  # 25 left available, 45 held elsewhere
    captured = books.do(books.wallets.capture, "gift-late")
    assert (captured.state, captured.promotional_amount, captured.debt_added) == (CAPTURED, 0, 45)
    wallet = books.wallet("alice")
    assert (wallet.status, wallet.debt, wallet.balance.total, wallet.balance.held) == (WalletStatus.FROZEN, 45, 45, 45)
    # The other gift still completes from its own hold; releasing it instead settles the debt.
    books.do(books.wallets.release, "gift-other")
    wallet = books.wallet("alice")
    assert (wallet.status, wallet.debt, wallet.balance.total) == (WalletStatus.ACTIVE, 0, 0)


def test_a_hold_is_not_expired_before_its_time(books: Books) -> None:
    books.open("alice")
    books.buy("alice", "coins_70")
    books.do(books.wallets.hold, "gift-1", "alice", 10, 60)
    books.clock.advance(seconds=59)
    assert books.do(books.wallets.expire, "gift-1") is False
    books.clock.advance(seconds=1)
    assert books.do(books.wallets.expire, "gift-1") is True
    assert books.run(lambda uow: uow.hold_by_gift("gift-1")).state == EXPIRED  # type: ignore[union-attr]


def test_refund_of_a_fully_spent_purchase_is_all_debt(books: Books) -> None:
    books.open("alice")
    bought = books.buy("alice", "coins_350").purchase
    books.do(books.wallets.hold, "gift-1", "alice", 350, 0)
    books.do(books.wallets.capture, "gift-1")
    result = books.do(books.wallets.refund, "sandbox", bought.store_transaction_id, "chargeback")
    assert (result.coins_reclaimed, result.debt_added, result.wallet.debt) == (0, 350, 350)
    assert result.purchase.refund_kind == "chargeback"
    frozen = refused(lambda: books.do(books.wallets.hold, "gift-2", "alice", 1, 0))
    assert frozen.reason == "WALLET_FROZEN" and frozen.metadata["debt"] == "350"


def test_underage_wallets_open_but_can_neither_buy_nor_spend(books: Books) -> None:
    today = books.clock.now().date()
    teen = books.open("teen", today.replace(year=today.year - 18) + timedelta(days=1))
    assert teen.adult is False
    bought = refused(lambda: books.buy("teen", "coins_70"))
    assert (bought.code, bought.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PURCHASER_UNDERAGE")
    assert refused(lambda: books.do(books.wallets.hold, "gift-1", "teen", 1, 0)).reason == "SENDER_UNDERAGE"
    books.clock.advance(days=1)  # the eighteenth birthday
    assert books.wallet("teen").adult is True
    books.buy("teen", "coins_70")
    assert books.do(books.wallets.hold, "gift-1", "teen", 1, 0).amount == 1


def test_catalogue_from_configuration() -> None:
    catalogue = Catalogue(
        parse_packages(
            '[{"package_id": "big", "coins": 1000, "prices": {"USD": 1299, "EUR": 1199}},'
            ' {"package_id": "small", "coins": 10, "prices": {"USD": 15}}]'
        )
    )
    assert [(p.package_id, p.price_minor) for p in catalogue.packages("")] == [("small", 15), ("big", 1299)]
    assert [(p.package_id, p.price_minor) for p in catalogue.packages("EUR")] == [("big", 1199)]
    assert catalogue.package("big", "EUR").coins == 1000
    not_sold = refused(lambda: catalogue.package("small", "EUR"))
    assert (not_sold.code, not_sold.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CURRENCY_NOT_SUPPORTED")
    assert refused(lambda: catalogue.package("huge", "USD")).reason == "PACKAGE_NOT_FOUND"


def test_user_ids_cannot_reach_each_others_accounts(books: Books) -> None:
    """Ids may contain ':'; account codes put the id last, so none can spell another's account."""
    for user_id in ("alice", "held-purchased:alice", "alice:held", "purchased:alice"):
        books.open(user_id)
    books.buy("alice", "coins_70")
    books.do(books.wallets.hold, "gift-1", "alice", 20, 0)
    for other in ("held-purchased:alice", "alice:held", "purchased:alice"):
        assert books.wallet(other).balance.total == 0
    assert (books.wallet("alice").balance.total, books.wallet("alice").balance.held) == (70, 20)
