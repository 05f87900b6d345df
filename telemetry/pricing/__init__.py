"""Exact cost per record from a price table with its sources written next to it."""

from .table import PriceError, PriceTable, Rates, load_price_table

__all__ = ["PriceError", "PriceTable", "Rates", "load_price_table"]
