"""Instructions per call the instrumentation adds, counted by valgrind's callgrind: the same count for the
same code and inputs whatever else the machine is doing, so a before/after pair is comparable when the
CPU-time figures of `bench/overhead.py` scatter by ±300 µs (2 cores shared with other work).

Each client (the raw SDK over an in-process mock transport; the same client instrumented, ledger only; both
with OTel SDK providers on) makes CALLS calls after a warm-up; callgrind's counters are zeroed before and
dumped after each block (flush included), all threads counted. What it cannot show: cache misses, GIL
hand-offs and wake-ups cost time, not instructions (valgrind runs one thread at a time, ~50× slower, so the
pipeline also wakes more often per call than it would natively) — the CPU figures stay the reference; these
are the load-independent view of the work itself.

Usage: python bench/instructions.py [CALLS]      (needs valgrind and gcc; ~4–6 min at the default 30)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _callgrind import Counters, counts  # noqa: E402

MODES = ("raw create", "inst create", "raw stream", "inst stream",
         "raw+otel create", "inst+otel create", "raw+otel stream", "inst+otel stream")


def child(lib: str, calls: int) -> None:
    from _clients import mock_clients
    from overhead import _create, _stream

    cg = Counters(lib)
    clients, _, telemetries = mock_clients(tempfile.mkdtemp())
    for client, flush in clients.values():  # warm-up: imports, schema, first batches, caches
        for _ in range(8):
            _create(client)
            _stream(client)
        flush()
    for mode in ("throwaway", *MODES):  # the first block after the warm-up takes its leftovers: not counted
        name, kind = mode.split() if mode != "throwaway" else ("inst", "create")
        client, flush = clients[name]
        call = _create if kind == "create" else _stream
        cg.zero()
        for _ in range(calls):
            call(client)
        flush()
        cg.dump(mode)
    for tel in telemetries:
        tel.shutdown()


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("calls", nargs="?", type=int, default=30)
    cli.add_argument("--child", help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.child:
        child(args.child, args.calls)
        return
    found = counts(__file__, lambda lib: [str(args.calls), "--child", lib])
    totals = {mode: count / args.calls for mode, count in found.items() if mode in MODES}
    missing = [m for m in MODES if m not in totals]
    if missing:
        sys.exit(f"bench/instructions.py: no callgrind dump for {', '.join(missing)}")
    print(f"instructions per call (callgrind, all threads, {args.calls} calls a block, mock transport)")
    print(f"{'block':18s} {'instructions':>14s} {'vs raw':>24s}")
    for mode in MODES:
        name, kind = mode.split()
        raw = totals[f"{'raw+otel' if 'otel' in name else 'raw'} {kind}"]
        extra = "" if name.startswith("raw") else f"+{totals[mode] - raw:,.0f} ({totals[mode] / raw:.3f}×)"
        print(f"{mode:18s} {totals[mode]:14,.0f} {extra:>24s}")


if __name__ == "__main__":
    main()
