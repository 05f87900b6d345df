"""Reading a Cost Management export: `read_export` (streaming, exact Decimal totals per day × resource) next to a
bare `csv.reader` pass over the same file, in the same run; plus the process's max RSS, which must not grow with
the file (the export is never held in memory).

Usage: python bench/reconcile.py [LINES]   (default 1,000,000)
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from telemetry.finance.reconcile import read_export

HEADER = ["BilledCost", "BillingCurrency", "ChargeCategory", "ChargePeriodStart", "ChargePeriodEnd",
          "ConsumedQuantity", "ConsumedUnit", "PublisherName", "ResourceId", "ResourceName", "x_SkuMeterName", "Tags"]


def write_export(path: Path, lines: int) -> None:
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for i in range(lines):
            hour = start + dt.timedelta(hours=i % 720)
            claude = i % 3 != 0
            w.writerow([f"0.{i % 997:04d}", "USD", "Usage", hour.strftime("%Y-%m-%dT%H:00:00Z"),
                        (hour + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:00:00Z"), f"{i % 997}", "1 CCU",
                        "Anthropic, PBC" if claude else "Microsoft",
                        f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/r{i % 7}",
                        f"r{i % 7}", "Claude Consumption Unit" if claude else "D4s v5", '{"team":"search"}'])


def timed(fn):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0, rss_mb()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.csv"
        write_export(path, lines)
        size = os.path.getsize(path)

        def bare() -> int:
            with open(path, newline="", encoding="utf-8") as fh:
                return sum(1 for _ in csv.reader(fh))

        _, b_wall, b_cpu, b_peak = timed(bare)
        totals, wall, cpu, peak = timed(lambda: read_export(path))
    print(f"export: {lines:,} lines, {size / 1e6:.1f} MB; {totals.claude_rows:,} Claude rows, "
          f"{len(totals.cost)} day × resource totals")
    print(f"csv.reader only : {lines / b_wall:>10,.0f} lines/s   cpu {b_cpu:.2f} s   max RSS {b_peak:.0f} MB")
    print(f"read_export     : {lines / wall:>10,.0f} lines/s   cpu {cpu:.2f} s   max RSS {peak:.0f} MB")
    print(f"ratio (read_export / csv.reader, wall): {wall / b_wall:.2f}x; "
          f"max RSS grew {peak - b_peak:.0f} MB for a {size / 1e6:.0f} MB file")


if __name__ == "__main__":
    main()
