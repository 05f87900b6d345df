"""SQLite's usage_records before and after revision 0005 ((created_at, id) key, no created_at index), in one
process: the same records inserted into a revision-0004 ledger and a head ledger, batch by batch alternated
(CPU per row, `time.process_time`), then every query that reads the rows timed on both, then the in-place
upgrade of the 0004 ledger timed.

With `--before DIR` (a checkout of the code before, e.g. `git archive main | tar -x -C DIR`), the 0004 ledger is
written, purged and re-priced by that checkout's store, retention and reprice modules: before/after in one run.
Usage: python bench/ledger_schema.py [ROWS] [BATCH] [--before DIR]   (defaults 300,000 rows, 250-row batches)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent))

import telemetry.ledger.retention as retention  # noqa: E402
import telemetry.ledger.store as store  # noqa: E402
import telemetry.pricing.reprice as repricing  # noqa: E402
from telemetry.ledger.db import get_engine, upgrade  # noqa: E402
from telemetry.pricing.table import load_price_table  # noqa: E402
from telemetry.record import UsageRecord  # noqa: E402
from telemetry.reports.chargeback import chargeback  # noqa: E402
from telemetry.reports.lookup import find  # noqa: E402
from telemetry.reports.stats import deployment_stats  # noqa: E402

DEPLOYMENTS = ["claude-sonnet-4-5", "claude-haiku-4-5", "my-claude", "batchy", "claude-opus-4-5"]


def records(n: int, start: dt.datetime, step: dt.timedelta, rng: random.Random) -> list[UsageRecord]:
    """Calls in time order (a little jitter), as a live writer sees them; random ids as the service gives."""
    return [UsageRecord(
        created_at=start + step * i + dt.timedelta(microseconds=rng.randrange(1000)), operation_id=uuid.uuid4().hex,
        attempt=0, request_id=f"req_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}",
        apim_request_id=str(uuid.UUID(int=rng.getrandbits(128))), deployment=rng.choice(DEPLOYMENTS),
        model="claude-sonnet-4-5-20250929", status_code=200, input_tokens=rng.randint(10, 4000),
        output_tokens=rng.randint(10, 800), cost_usd=Decimal(rng.randint(1, 90000)).scaleb(-7),
        latency_ms=rng.random() * 4000, team=rng.choice(["search", "support", "finance"]), project="p",
        user=f"u{rng.randint(1, 50)}", tags={"f": "x"}, record_id=uuid.uuid4().hex) for i in range(n)]


def timed(fns: dict[str, Callable[[], Any]], repeat: int = 5) -> dict[str, float]:
    """Median wall ms of each, run alternately (the order flipped each round)."""
    runs: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeat):
        for k in (list(fns) if i % 2 == 0 else list(reversed(fns))):
            t = time.perf_counter()
            fns[k]()
            runs[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in runs.items()}


def load(root: str, module: str) -> Any:
    """`telemetry.x.y` as it is in the checkout at `root`, beside this tree's (its relative imports: ours)."""
    spec = importlib.util.spec_from_file_location(f"{module}_before",
                                                  Path(root, *module.split(".")).with_suffix(".py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def main(n: int, batch: int, before: str | None) -> None:
    tmp = tempfile.mkdtemp()
    urls = {"0004": f"sqlite:///{tmp}/v4.db", "head": f"sqlite:///{tmp}/head.db"}
    upgrade(urls["0004"], "0004")
    upgrade(urls["head"])
    old = (load(before, "telemetry.ledger.store"), load(before, "telemetry.ledger.retention"),
           load(before, "telemetry.pricing.reprice")) if before else (store, retention, repricing)
    code = {"0004": old, "head": (store, retention, repricing)}
    stores = {k: code[k][0].LedgerStore(get_engine(u)) for k, u in urls.items()}
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=30)
    step = dt.timedelta(days=30) / n
    per_row: dict[str, list[float]] = {k: [] for k in urls}
    deltas: list[float] = []
    sample: list[UsageRecord] = []
    print(f"{n:,} rows in {batch}-row batches, 30 days in time order; 0004 ledger by "
          f"{'the code in ' + before if before else 'this code'}; load average {os.getloadavg()[0]:.2f}")
    for i in range(0, n, batch):
        chunk = records(min(batch, n - i), start + step * i, step, rng)
        sample.append(chunk[0])
        order = list(urls) if (i // batch) % 2 == 0 else list(reversed(urls))
        got = {}
        for k in order:
            t = time.process_time()
            stores[k].insert(chunk)
            got[k] = (time.process_time() - t) / len(chunk) * 1e6
            per_row[k].append(got[k])
        deltas.append(got["head"] - got["0004"])
    for part, rows in (("first tenth", slice(0, len(deltas) // 10)), ("last tenth", slice(-(len(deltas) // 10), None)),
                       ("all", slice(None))):
        a, b, d = per_row["0004"][rows], per_row["head"][rows], deltas[rows]
        print(f"insert + rollups, µs CPU per row, {part:11}: 0004 median {statistics.median(a):5.1f} "
              f"(min {min(a):5.1f})  head {statistics.median(b):5.1f} (min {min(b):5.1f})  "
              f"head − 0004 per batch: median {statistics.median(d):+5.1f}")
    price = load_price_table()
    kind_of = {get_engine(u).url.database: k for k, u in urls.items()}
    today = now.date()
    picks = rng.sample(sample, min(40, len(sample)))
    queries: dict[str, Callable[[Any], Any]] = {
        "lookup by request-id (40)": lambda e: [find(e, r.request_id) for r in picks],
        "lookup by apim-request-id (40)": lambda e: [find(e, r.apim_request_id) for r in picks],
        "stats, last hour (alerts)": lambda e: deployment_stats(e, now - dt.timedelta(hours=1), now),
        "stats, last day": lambda e: deployment_stats(e, now - dt.timedelta(days=1), now),
        "report, 30 days by team, deployment, day": lambda e: chargeback(
            e, today - dt.timedelta(days=30), today, ["team", "deployment", "day"]),
        "reprice --dry-run, one day": lambda e: code[kind_of[e.url.database]][2].reprice(
            e, price, today - dt.timedelta(days=3), today - dt.timedelta(days=3), dry_run=True),
    }
    print(f"{'query (median of 5, ms)':44} {'0004':>9} {'head':>9}")
    for label, query in queries.items():
        got = timed({k: lambda k=k, query=query: query(get_engine(urls[k])) for k in urls})
        print(f"{label:44} {got['0004']:9.2f} {got['head']:9.2f}")
    shutil.copy(f"{tmp}/v4.db", f"{tmp}/v4-copy.db")
    got = {}
    for k in urls:
        t = time.perf_counter()
        code[k][1].purge(get_engine(urls[k]), 27)  # the oldest three days
        got[k] = (time.perf_counter() - t) * 1e3
    print(f"{'purge of the oldest 3 days (10 %), ms':44} {got['0004']:9.1f} {got['head']:9.1f}")
    size = os.path.getsize(f"{tmp}/v4-copy.db") / 1e6
    t = time.perf_counter()
    upgrade(f"sqlite:///{tmp}/v4-copy.db")
    print(f"upgrade 0004 → head in place: {n:,} rows ({size:.0f} MB) in {time.perf_counter() - t:.1f} s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=300_000)
    parser.add_argument("batch", nargs="?", type=int, default=250)
    parser.add_argument("--before", metavar="DIR", help="a checkout of the code to compare with")
    args = parser.parse_args()
    main(args.rows, args.batch, args.before)
