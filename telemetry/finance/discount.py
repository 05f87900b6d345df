"""List cost → billed cost → Claude Consumption Units.

Foundry rates usage at Anthropic's list prices, applies the contractual discount, then converts to CCUs of a
fixed $0.01 (Microsoft Learn, "Claude Consumption Units (CCU) billing in Microsoft Foundry"): a discount means
fewer CCUs, never a cheaper CCU. Each row keeps the discount in force when it was recorded, so a new contract
does not rewrite history.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from ..settings import SettingsError, discount_fraction

CCU_USD = Decimal("0.01")
QUANTUM = Decimal("1e-10")  # the ledger's exactness: every stored amount is a whole number of 1e-10 USD


def billed_cost(list_cost: Decimal | None, discount: Decimal) -> Decimal | None:
    """list × (1 − discount), rounded half-even to 1e-10 USD; an unknown list price stays unknown."""
    if list_cost is None:
        return None
    return (list_cost * (1 - discount)).quantize(QUANTUM)


def ccus(billed_usd: Decimal) -> Decimal:
    """Billed USD in Claude Consumption Units ($0.01 each), exact."""
    return billed_usd / CCU_USD


@dataclass(frozen=True)
class Discounts:
    """The default discount (FOUNDRY_TELEMETRY_DISCOUNT) and per-resource ones (`[discounts]` in the price file)."""

    default: Decimal = Decimal(0)
    by_resource: dict[str, Decimal] = field(default_factory=dict)

    def for_resource(self, resource: str | None) -> Decimal:
        if resource and self.by_resource:
            return self.by_resource.get(resource.lower(), self.default)
        return self.default

    def billed(self, list_cost: Decimal | None, resource: str | None) -> Decimal | None:
        return billed_cost(list_cost, self.for_resource(resource))


def load_discounts(prices_path: str | Path | None, default: Decimal = Decimal(0)) -> Discounts:
    """Per-resource discounts from the price file's `[discounts]` table: `"my-resource" = "0.15"`; a bad value
    there is a one-line `SettingsError`."""
    if not prices_path:
        return Discounts(default)
    p = Path(prices_path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return Discounts(default)  # the price loader reports an unreadable file, once
    table = data.get("discounts", {})
    if not isinstance(table, dict):
        raise SettingsError(f"price file {p}: [discounts] must be a table of resource = \"fraction\"")
    by_resource = {str(name).lower(): discount_fraction(value, f"{p}: discounts.{name}")
                   for name, value in table.items()}
    return Discounts(default, by_resource)
