"""Budget status lines for `alerts check`: spend, percent, and the forecast with its inputs."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def print_budgets(statuses: list[dict[str, Any]], console: Console) -> None:
    for s in statuses:
        pct = f" ({s['percent_spent']} %)" if s["percent_spent"] is not None else ""
        line = f"{s['budget']}: spent ${s['spent_usd']}{pct} of ${s['amount_usd']} in {s['month']}"
        fc = s["forecast"]
        if fc:
            inputs = ", ".join(f"{k}={v}" for k, v in fc["inputs"].items())
            line += f" · forecast ${fc['value_usd']} ({fc['description']}; inputs: {inputs})"
        console.print(line, soft_wrap=True, highlight=False)
