"""Finance: CCUs and contractual discounts, hourly billed totals, reconciliation with Azure Cost Management
exports, and monthly budgets with a forecast to month end."""

from .discount import CCU_USD, Discounts, billed_cost, ccus, load_discounts

__all__ = ["CCU_USD", "Discounts", "billed_cost", "ccus", "load_discounts"]
