"""Exact numbers in and out: user-supplied amounts (price files, rule files) parsed into decimals with
one-line errors, and the one way every surface (table, CSV, JSON, HTML, lookup) prints an amount:
plain decimal notation, never `1E-7` or `0E-10`."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


def non_negative_decimal(value: Any, where: str, error: type[ValueError]) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise error(f"{where}: {value!r} is not a number")
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise error(f"{where}: {value!r} is not a number") from None
    if not result.is_finite() or result < 0:
        raise error(f"{where}: {value!r} must be a non-negative number")
    return result


def plain(value: Decimal | int | None) -> str | None:
    """Exact value in plain notation, without trailing zeros: 2.5E-7 → "0.00000025", 0E-10 → "0"."""
    if value is None:
        return None
    d = value if isinstance(value, Decimal) else Decimal(value)
    if d.is_zero():
        return "0"
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def money(value: Decimal | int | float, places: int = 4, symbol: str = "$") -> str:
    """Rounded for people: "$1,234.5000". Floats (chart scales) go through their shortest repr."""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    q = d.quantize(Decimal(1).scaleb(-places))
    if q.is_zero():
        q = abs(q)  # no "-0.0000"
    return f"{symbol}{q:,.{places}f}"
