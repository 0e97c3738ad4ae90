"""Money in words: minor units shown in the currency's own units, in integer arithmetic (never a float)."""

from __future__ import annotations

# ISO 4217 currencies whose minor unit is not the cent.
_MINOR_DIGITS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3}


def format_money(amount_minor: int, currency_code: str) -> str:
    """`511, "USD"` -> "5.11 USD"; `1000, "JPY"` -> "1,000 JPY"."""
    digits = _MINOR_DIGITS.get(currency_code, 2)
    sign = "-" if amount_minor < 0 else ""
    minor = abs(amount_minor)
    if digits == 0:
        return f"{sign}{minor:,} {currency_code}".strip()
    scale = 10**digits
    return f"{sign}{minor // scale:,}.{minor % scale:0{digits}d} {currency_code}".strip()
