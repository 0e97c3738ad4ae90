"""The payout arithmetic (model.payout_amounts): integers only, floors written once, nothing lost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.payout.model import Rate, cash_value, payout_amounts

DEFAULT_RATE = Rate(cents=100, diamonds=200)


def test_default_rate_and_fee() -> None:
    amounts = payout_amounts(2000, DEFAULT_RATE, 300)
    assert (amounts.diamonds, amounts.gross, amounts.fee, amounts.net) == (2000, 1000, 30, 970)


def test_an_odd_diamond_stays_on_the_balance() -> None:
    amounts = payout_amounts(2063, DEFAULT_RATE, 300)
    # gross floor(2063 / 2) = 1031; 2062 diamonds are worth it; fee floor(30.93) = 30 (the creator's favour).
    assert (amounts.diamonds, amounts.gross, amounts.fee, amounts.net) == (2062, 1031, 30, 1001)


def test_nothing_to_pay() -> None:
    assert payout_amounts(1, DEFAULT_RATE, 300) == payout_amounts(0, DEFAULT_RATE, 300)
    assert payout_amounts(1, DEFAULT_RATE, 300).diamonds == 0


@given(
    diamonds=st.integers(min_value=0, max_value=10**15),
    cents=st.integers(min_value=1, max_value=10_000),
    per_diamonds=st.integers(min_value=1, max_value=10_000),
    fee_bps=st.integers(min_value=0, max_value=9_999),
)
def test_no_diamond_or_cent_is_lost_or_invented(diamonds: int, cents: int, per_diamonds: int, fee_bps: int) -> None:
    rate = Rate(cents, per_diamonds)
    a = payout_amounts(diamonds, rate, fee_bps)
    assert all(type(x) is int for x in (a.diamonds, a.gross, a.fee, a.net))
    # gross is the floor of the diamonds' value: never more, and less by under one cent.
    assert a.gross * per_diamonds <= diamonds * cents < (a.gross + 1) * per_diamonds
    assert a.gross == cash_value(diamonds, rate)
    # The payout takes diamonds worth exactly gross, and no more than it needs.
    assert 0 <= a.diamonds <= diamonds
    assert cash_value(a.diamonds, rate) == a.gross
    assert a.diamonds == 0 or cash_value(a.diamonds - 1, rate) < a.gross
    # The leftover stays on the balance: taken + leftover is every diamond asked for.
    assert a.diamonds + (diamonds - a.diamonds) == diamonds
    # fee is the floor of the share, in the creator's favour; fee + net is exactly gross.
    assert a.fee * 10_000 <= a.gross * fee_bps < (a.fee + 1) * 10_000
    assert a.fee + a.net == a.gross
    assert 0 <= a.fee <= a.gross and a.net >= 0
