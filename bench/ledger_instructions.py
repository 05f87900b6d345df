"""Instructions per ledger row (SQLite), counted by valgrind's callgrind: the store's insert + rollups of the same
records into a revision-0004 ledger and a head ledger, each after the same prefill; with `--before DIR` the
0004 ledger is written by that checkout's store (see bench/ledger_schema.py). Load-independent, unlike the CPU
figures; what it cannot show is time spent waiting for memory and the kernel's share of each write(2).

Usage: python bench/ledger_instructions.py [BATCH] [BATCHES] [--prefill N] [--before DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _callgrind import Counters, counts  # noqa: E402

BLOCKS = ("0004", "head")


def child(lib: str, batch: int, batches: int, prefill: int, before: str | None) -> None:
    from ledger_schema import load, records

    import telemetry.ledger.store as store
    from telemetry.ledger.db import get_engine, upgrade

    cg = Counters(lib)
    tmp = tempfile.mkdtemp()
    urls = {"0004": f"sqlite:///{tmp}/v4.db", "head": f"sqlite:///{tmp}/head.db"}
    upgrade(urls["0004"], "0004")
    upgrade(urls["head"])
    old = load(before, "telemetry.ledger.store") if before else store
    stores = {"0004": old.LedgerStore(get_engine(urls["0004"])), "head": store.LedgerStore(get_engine(urls["head"]))}
    rng = random.Random(3)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    step = dt.timedelta(milliseconds=50)
    fill = records(prefill + batch, start, step, rng)
    chunks = [records(batch, start + step * (prefill + batch + i * batch), step, rng) for i in range(batches)]
    for s in stores.values():
        for i in range(0, len(fill), 5000):
            s.insert(fill[i:i + 5000])
    for name in BLOCKS:
        cg.zero()
        for chunk in chunks:
            stores[name].insert(chunk)
        cg.dump(name)


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("batch", nargs="?", type=int, default=250)
    cli.add_argument("batches", nargs="?", type=int, default=8)
    cli.add_argument("--prefill", type=int, default=20_000)
    cli.add_argument("--before", metavar="DIR")
    cli.add_argument("--child", help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.child:
        child(args.child, args.batch, args.batches, args.prefill, args.before)
        return
    totals = counts(__file__, lambda lib: [str(args.batch), str(args.batches), "--prefill", str(args.prefill),
                                           "--child", lib, *(["--before", args.before] if args.before else [])])
    rows = args.batch * args.batches
    print(f"instructions per row, {args.batches} batches of {args.batch} after {args.prefill:,} rows "
          f"(0004 ledger by {'the code in ' + args.before if args.before else 'this code'})")
    for name in BLOCKS:
        print(f"{name:5} {totals[name] / rows:12,.0f}")
    print(f"head / 0004: {totals['head'] / totals['0004']:.3f}")


if __name__ == "__main__":
    main()
