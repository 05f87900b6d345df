"""Parsing user-supplied amounts (price files, rule files) into exact decimals, with one-line errors."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


def non_negative_decimal(value: Any, where: str, error: type[ValueError]) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise error(f"{where}: {value!r} is not a number")
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        raise error(f"{where}: {value!r} is not a number") from None
    if not result.is_finite() or result < 0:
        raise error(f"{where}: {value!r} must be a non-negative number")
    return result
