"""ListTransactions: the caller's movements, newest first, in pages that neither skip nor repeat."""

from __future__ import annotations

from giftcoin.wallet.v1 import wallet_pb2

from tests.wallet.conftest import WalletHarness


def test_history_pages_newest_first_without_gaps_or_repeats(wallet: WalletHarness) -> None:
    wallet.open_wallet("alice")
    wallet.open_wallet("bob")
    wallet.buy("bob", "coins_70")  # someone else's movements never show
    purchase = wallet.buy("alice", "coins_350").purchase
    for n in range(5):
        wallet.hold(f"gift-{n}", "alice", 10)
        wallet.capture(f"gift-{n}") if n % 2 else wallet.release(f"gift-{n}")

    everything = wallet.history("alice", page_size=500).transactions
    assert len(everything) == 11
    assert everything[-1].kind == wallet_pb2.TRANSACTION_KIND_PURCHASE
    assert everything[-1].reference == purchase.purchase_id
    assert everything[-1].total_delta == 350
    assert [t.kind for t in everything[:2]] == [wallet_pb2.TRANSACTION_KIND_RELEASE, wallet_pb2.TRANSACTION_KIND_HOLD]
    hold = everything[1]
    assert (hold.total_delta, hold.held_delta, hold.reference) == (0, 10, "gift-4")
    assert sum(t.total_delta for t in everything) == wallet.get("alice").balance.total == 330

    pages, token = [], ""
    while True:
        page = wallet.history("alice", page_size=3, page_token=token)
        pages.append(list(page.transactions))
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    assert [t.transaction_id for p in pages for t in p] == [t.transaction_id for t in everything]
    assert len(wallet.history("alice").transactions) == 11  # page_size 0 means 50
    assert len(wallet.history("bob").transactions) == 1
