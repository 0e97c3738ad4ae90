"""The double-entry ledger: zero-sum transfers, balances that never go negative, on both databases."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text, update

from services.runtime.clock import FakeClock
from services.runtime.ledger import Ledger, Overdraft, Posting, UnbalancedTransfer, ledger_problems
from tests.runtime.conftest import RuntimeSchema


def open_accounts(schema: RuntimeSchema, clock: FakeClock) -> None:
    with schema.db.transaction() as conn:
        ledger = Ledger(schema.ledger, conn)
        ledger.open_account("platform:issued", "coin", clock.now(), platform=True)
        ledger.open_account("platform:spent", "coin", clock.now(), platform=True)
        ledger.open_account("user:alice", "coin", clock.now())
        ledger.open_account("user:alice", "coin", clock.now())  # idempotent
        ledger.open_account("creator:bob", "diamond", clock.now())
        ledger.open_account("platform:diamonds", "diamond", clock.now(), platform=True)


def grant(schema: RuntimeSchema, clock: FakeClock, coins: int) -> None:
    with schema.db.transaction() as conn:
        Ledger(schema.ledger, conn).post(
            "grant", "t", [Posting("platform:issued", -coins), Posting("user:alice", coins)], clock.now()
        )


def balance(schema: RuntimeSchema, account: str) -> int:
    with schema.db.transaction() as conn:
        return Ledger(schema.ledger, conn).balance(account)


def test_balances_follow_entries_and_platform_accounts_may_go_negative(schema, clock) -> None:
    open_accounts(schema, clock)
    grant(schema, clock, 100)
    with schema.db.transaction() as conn:
        Ledger(schema.ledger, conn).post(
            "gift",
            "g1",
            [
                Posting("user:alice", -30),
                Posting("platform:spent", 30),
                Posting("platform:diamonds", -15),
                Posting("creator:bob", 15),
            ],
            clock.now(),
        )
    assert balance(schema, "user:alice") == 70
    assert balance(schema, "platform:issued") == -100
    assert balance(schema, "platform:spent") == 30
    assert balance(schema, "creator:bob") == 15
    with schema.db.transaction() as conn:
        assert ledger_problems(schema.ledger, conn) == []


def test_an_overdraft_writes_nothing(schema, clock) -> None:
    open_accounts(schema, clock)
    grant(schema, clock, 10)
    with pytest.raises(Overdraft) as overdraft, schema.db.transaction() as conn:
        Ledger(schema.ledger, conn).post(
            "spend", "s", [Posting("user:alice", -11), Posting("platform:spent", 11)], clock.now()
        )
    assert overdraft.value.account == "user:alice"
    assert balance(schema, "user:alice") == 10
    assert balance(schema, "platform:spent") == 0


def test_unbalanced_transfers_are_refused_before_writing(schema, clock) -> None:
    open_accounts(schema, clock)
    with pytest.raises(UnbalancedTransfer), schema.db.transaction() as conn:
        Ledger(schema.ledger, conn).post(
            "bad", "b", [Posting("platform:issued", -5), Posting("user:alice", 4)], clock.now()
        )
    with pytest.raises(UnbalancedTransfer), schema.db.transaction() as conn:  # zero per unit, not overall
        Ledger(schema.ledger, conn).post(
            "bad",
            "b",
            [Posting("user:alice", 0), Posting("platform:issued", -5), Posting("creator:bob", 5)],
            clock.now(),
        )
    assert balance(schema, "user:alice") == 0


def test_concurrent_spends_never_overdraw(schema, clock) -> None:
    open_accounts(schema, clock)
    grant(schema, clock, 100)

    def spend(_: int) -> bool:
        try:
            schema.db.run(
                lambda conn: Ledger(schema.ledger, conn).post(
                    "spend", "s", [Posting("user:alice", -3), Posting("platform:spent", 3)], clock.now()
                )
            )
            return True
        except Overdraft:
            return False

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(spend, range(50)))
    assert outcomes.count(True) == 33
    assert balance(schema, "user:alice") == 1
    with schema.db.transaction() as conn:
        assert ledger_problems(schema.ledger, conn) == []


def test_the_database_itself_refuses_a_negative_holder_balance(schema, clock) -> None:
    open_accounts(schema, clock)
    accounts = schema.ledger.accounts
    with pytest.raises(Exception, match=r"(?i)check"), schema.db.transaction() as conn:
        conn.execute(update(accounts).where(accounts.c.code == "user:alice").values(balance=-1))


def test_problems_are_reported(schema, clock) -> None:
    open_accounts(schema, clock)
    grant(schema, clock, 10)
    accounts = schema.ledger.accounts
    with schema.db.transaction() as conn:  # a balance changed without its entries
        conn.execute(update(accounts).where(accounts.c.code == "user:alice").values(balance=12))
        assert ledger_problems(schema.ledger, conn) == ["account user:alice balance 12 != entries 10"]


def test_a_platform_account_stores_no_balance_and_the_documented_query_derives_it(schema, clock) -> None:
    open_accounts(schema, clock)
    grant(schema, clock, 100)
    grant(schema, clock, 20)
    accounts = schema.ledger.accounts
    with schema.db.transaction() as conn:
        stored = dict(conn.execute(select(accounts.c.code, accounts.c.balance)).tuples().all())
        assert stored["platform:issued"] is None and stored["user:alice"] == 120
        # runtime/ledger.py's query for a platform account's balance: the sum of its entries.
        derived = dict(
            conn.execute(
                text(
                    "SELECT a.code, COALESCE(SUM(e.amount), 0) AS balance "
                    "FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account = a.code "
                    "WHERE a.platform GROUP BY a.code, a.unit"
                )
            )
            .tuples()
            .all()
        )
        assert derived == {"platform:issued": -120, "platform:spent": 0, "platform:diamonds": 0}
        assert Ledger(schema.ledger, conn).balance("platform:issued") == -120
    for code, value in (("platform:issued", 0), ("user:alice", None)):  # a stored platform balance; a holder without
        with pytest.raises(Exception, match=r"(?i)check"), schema.db.transaction() as conn:
            conn.execute(update(accounts).where(accounts.c.code == code).values(balance=value))
