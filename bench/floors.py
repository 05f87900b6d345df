"""What issue 11's CPU targets leave for our own code once the parts no code of ours can remove are paid: the
floors, counted by valgrind's callgrind (load-independent), beside what the instrumentation costs now.

Floors, each the least any instrumentation with this design must pay per call, measured on this machine:
- the SDK's middleware seam: the same client with one middleware that only calls `call_next` (the SDK copies the
  request options and parses through an `APIResponse` once a middleware is registered);
- the SQLite ledger row: rows our own row function built beforehand, through the driver's `executemany` in a
  `BEGIN IMMEDIATE … COMMIT` of BATCH rows, into a head-revision ledger PREFILL rows deep (no totals, no
  Python per row): SQLite's own B-tree work for the key and the two lookup indexes that idempotency and
  support lookups need;
- (for reference, not a floor: a pass-through httpx2 transport, the seam `tel.httpx2_client()` uses, which sees
  attempts but not the call they belong to, so its rows lose the operation grouping the middleware gives);
- the OpenTelemetry span: one span started and ended through the SDK's public API with no attributes, a
  `BatchSpanProcessor` and a null exporter (the metric points are counted as free).
The journal's write(2) and fsync run in the kernel, which callgrind does not count: free here too, so every
floor is a lower bound. Instructions become µs at the rate the SDK's own code runs natively in this process
(raw calls timed by `process_time` outside valgrind): the floors in µs are as cheap as this machine makes them.

Usage: python bench/floors.py [CALLS (default 30)] [--batch 250] [--prefill 20000]   (~4 min; valgrind, gcc)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _callgrind import Counters, counts  # noqa: E402

TARGETS_US = {"ledger only": 60, "OTel on": 150}  # issue 11: added CPU per create call


def _clients(tmp: str) -> tuple[dict[str, tuple[Any, Any]], Any, list[Any]]:
    """bench/_clients.py's four, plus the raw SDK behind a do-nothing middleware and a do-nothing transport."""
    import anthropic
    import httpx2
    from _clients import mock_clients
    from overhead import mock_response

    class CallNext(anthropic.Middleware):
        def handle(self, request: Any, call_next: Any) -> Any:
            return call_next(request)

    class PassThrough(httpx2.BaseTransport):
        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def handle_request(self, request: Any) -> Any:
            return self._inner.handle_request(request)

    clients, tp, telemetries = mock_clients(tmp)
    raw = clients["raw"][0]
    clients["seam"] = (raw.with_options(middleware=[CallNext()]), lambda: None)
    clients["transport"] = (raw.with_options(http_client=httpx2.Client(
        transport=PassThrough(httpx2.MockTransport(mock_response)))), lambda: None)
    return clients, tp, telemetries


def child(lib: str, calls: int, batch: int, prefill: str) -> None:
    import gc
    import sqlite3

    from ledger_schema import records
    from overhead import _create

    from telemetry.ledger.db import get_engine
    from telemetry.ledger.store import _INSERT_OR_IGNORE, LedgerStore

    cg = Counters(lib)
    tmp = tempfile.mkdtemp()
    clients, tp, telemetries = _clients(tmp)
    for client, flush in clients.values():  # warm-up: imports, schema, first batches, caches
        for _ in range(8):
            _create(client)
        flush()
    for name in ("throwaway", *clients):  # the first block after the warm-up takes its leftovers: not counted
        client, flush = clients["inst" if name == "throwaway" else name]
        cg.zero()
        for _ in range(calls):
            _create(client)
        flush()
        cg.dump(f"call {name}")

    tracer = tp.get_tracer("floor")
    start = time.time_ns()
    for _ in range(10):
        tracer.start_span("chat floor", start_time=start).end(end_time=start + 1000)
    tp.force_flush()
    cg.zero()
    for i in range(10 * calls):  # 10× the calls: the flush's own export is a cost per block, not per span
        tracer.start_span("chat floor", start_time=start + i).end(end_time=start + i + 1000)
    tp.force_flush()
    cg.dump("span floor")

    # the ledger row: the same head ledger, prefilled; prebuilt rows through executemany (the floor) and
    # records through our store (ours), alternating chunk by chunk
    import datetime as dt
    import random

    path, n_chunks = Path(prefill), 8
    store = LedgerStore(get_engine(f"sqlite:///{path}"))
    rng = random.Random(5)
    begin = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    step = dt.timedelta(milliseconds=5)
    chunks = [records(batch, begin + step * batch * i, step, rng) for i in range(2 * n_chunks)]
    rows = [[store._row(r) for r in chunk] for chunk in chunks[::2]]
    conn = sqlite3.connect(path, isolation_level=None)
    gc.collect()
    for i in range(n_chunks):
        cg.zero()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT_OR_IGNORE, rows[i])
        conn.execute("COMMIT")
        cg.dump(f"row floor {i}")
        cg.zero()
        store.insert(chunks[2 * i + 1])
        cg.dump(f"row ours {i}")
    conn.close()
    for tel in telemetries:
        tel.shutdown()


def prefilled(n: int) -> Path:
    """A head-revision ledger with `n` rows (written natively, before valgrind starts)."""
    import datetime as dt
    import random

    from ledger_schema import records

    from telemetry.ledger.db import get_engine, upgrade
    from telemetry.ledger.store import LedgerStore

    path = Path(tempfile.mkdtemp()) / "floor.db"
    upgrade(f"sqlite:///{path}")
    store = LedgerStore(get_engine(f"sqlite:///{path}"))
    fill = records(n, dt.datetime.now(dt.UTC) - dt.timedelta(days=1), dt.timedelta(milliseconds=3),
                   random.Random(3))
    for i in range(0, n, 5000):
        store.insert(fill[i:i + 5000])
    store.engine.dispose()
    return path


def native_rates(rounds: int = 12, n: int = 150) -> dict[str, float]:
    """CPU µs per create call of each client, natively (blocks alternated, medians)."""
    from overhead import _create

    clients, _, telemetries = _clients(tempfile.mkdtemp())
    for client, flush in clients.values():
        for _ in range(30):
            _create(client)
        flush()
    got: dict[str, list[float]] = {k: [] for k in clients}
    for r in range(rounds):
        names = list(clients)
        for name in names[r % len(names):] + names[:r % len(names)]:
            client, flush = clients[name]
            t = time.process_time()
            for _ in range(n):
                _create(client)
            flush()
            got[name].append((time.process_time() - t) / n * 1e6)
    for tel in telemetries:
        tel.shutdown()
    return {k: statistics.median(v) for k, v in got.items()}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("calls", nargs="?", type=int, default=30)
    cli.add_argument("--batch", type=int, default=250)
    cli.add_argument("--prefill", type=int, default=20_000)
    cli.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.child:
        child(args.child[0], args.calls, args.batch, args.child[1])
        return
    db = prefilled(args.prefill)
    found = counts(__file__, lambda lib: [str(args.calls), "--batch", str(args.batch), "--child", lib, str(db)])
    per_call = {k.removeprefix("call "): v / args.calls for k, v in found.items() if k.startswith("call ")}
    floor_rows = [v / args.batch for k, v in found.items() if k.startswith("row floor")]
    our_rows = [v / args.batch for k, v in found.items() if k.startswith("row ours")]
    span = found["span floor"] / (10 * args.calls)
    cpu = native_rates()
    ns = cpu["raw"] * 1e3 / per_call["raw"]  # ns per instruction of the SDK's own code, natively

    seam = per_call["seam"] - per_call["raw"]
    row_floor, row_ours = statistics.median(floor_rows), statistics.median(our_rows)
    ours = {"ledger only": per_call["inst"] - per_call["raw"], "OTel on": per_call["inst+otel"] - per_call["raw+otel"]}
    floors = {"ledger only": seam + row_floor, "OTel on": seam + row_floor + span}
    print(f"instructions per create call (callgrind, mock transport, {args.calls} calls a block; ledger rows in "
          f"{args.batch}-row batches after {args.prefill:,}); µs at the SDK's native rate, {ns:.2f} ns/instruction "
          f"(raw create {cpu['raw']:.0f} µs CPU, {per_call['raw'] / 1e3:,.0f}k instructions)")
    print(f"  {'floor: the SDK middleware seam (a middleware that only calls call_next)':76} {seam:9,.0f}"
          f" {seam * ns / 1e3:6.1f} µs")
    transport = per_call["transport"] - per_call["raw"]
    print(f"  {'(for reference: a pass-through httpx2 transport, the seam without call grouping)':76} "
          f"{transport:9,.0f} {transport * ns / 1e3:6.1f} µs")
    print(f"  {'floor: a prebuilt row through executemany (SQLite B-trees and commit)':76} {row_floor:9,.0f}"
          f" {row_floor * ns / 1e3:6.1f} µs   ours per row {row_ours:,.0f}")
    print(f"  {'floor: one OTel span, public API, no attributes, batch processor':76} {span:9,.0f}"
          f" {span * ns / 1e3:6.1f} µs")
    for mode, target in TARGETS_US.items():
        native = cpu["inst" if mode == "ledger only" else "inst+otel"] - cpu["raw" if mode == "ledger only"
                                                                          else "raw+otel"]
        left = target * 1e3 / ns - floors[mode]
        print(f"  {mode:11} target ≤ +{target} µs = {target * 1e3 / ns:,.0f} instructions at that rate; floors "
              f"{floors[mode]:,.0f} ({floors[mode] * ns / 1e3:.0f} µs), leaving {left:,.0f} for capture, record, "
              f"price, journal line and row building; ours now +{ours[mode]:,.0f} instructions, +{native:.0f} µs "
              f"CPU natively ({native * 1e3 / ours[mode]:.2f} ns/instruction)")


if __name__ == "__main__":
    main()
