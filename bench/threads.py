"""Where the CPU of instrumented calls goes, by thread, end to end (the whole pipeline, as in use).

Runs the same blocks of calls over the in-process mock transport as `bench/overhead.py`, raw and instrumented
(ledger only, and with OTel SDK providers), and reads each thread's own CPU clock
(`time.pthread_getcpuclockid`) before and after: the caller's thread, the pipeline, the ledger writer, the
OTel span processor. Optionally (`--yappi`) profiles the background threads with yappi's CPU clock and prints
their top functions, to see what is left inside each.
`--paced` measures instead calls that come at a fixed pace (5, 20 and 100 a second: the caller sleeps between
them, as a process waiting on slow model calls does), where the background threads' wake-ups, not the work per
record, are most of the cost.
Usage: python bench/threads.py [--yappi | --paced] [ROUNDS] [CALLS_PER_BLOCK]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _clients import null_providers  # noqa: E402
from overhead import _create, _stream, sdk_client  # noqa: E402

from telemetry import Telemetry  # noqa: E402


def thread_cpu() -> dict[str, float]:
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(t.ident))  # type: ignore[arg-type]
        except (OSError, TypeError):
            continue
        name = t.name if t is not threading.main_thread() else "caller"
        name = "otel-span-processor" if "OtelBatch" in name or "BatchSpan" in name else name
        out[name] = out.get(name, 0.0) + cpu
    return out


def block(client: Any, call: Any, flush: Any, n: int) -> tuple[float, dict[str, float]]:
    before = thread_cpu()
    p0 = time.process_time()
    for _ in range(n):
        call(client)
    flush()
    total = time.process_time() - p0
    after = thread_cpu()
    return total / n, {k: (v - before.get(k, 0.0)) / n for k, v in after.items()}


def paced(rounds: int, seconds: float = 3.0) -> None:
    tmp = tempfile.mkdtemp()
    tel = Telemetry(db_url=f"sqlite:///{tmp}/ledger.db", spool_dir=f"{tmp}/spool")
    clients = {"raw": (sdk_client(mock=True), lambda: None), "inst": (tel.instrument(sdk_client(mock=True)), tel.flush)}
    for client, flush in clients.values():
        block(client, _create, flush, 100)
    results: dict[tuple[float, str], list[tuple[float, dict[str, float]]]] = {}
    for _ in range(rounds):
        for rate in (5, 20, 100):
            for name, (client, flush) in clients.items():
                def call(c: Any, gap: float = 1 / rate) -> None:
                    _create(c)
                    time.sleep(gap)
                results.setdefault((rate, name), []).append(block(client, call, flush, int(seconds * rate)))
    tel.shutdown()
    print(f"paced create calls, ledger only: CPU per call, µs (median over {rounds} rounds of {seconds:.0f} s)")
    for rate in (5, 20, 100):
        b, o = results[(rate, "raw")], results[(rate, "inst")]
        total = statistics.median(x[0] - y[0] for x, y in zip(o, b, strict=True)) * 1e6
        raw = statistics.median(x[0] for x in b) * 1e6
        by = {t: statistics.median(x[1].get(t, 0) - y[1].get(t, 0) for x, y in zip(o, b, strict=True)) * 1e6
              for t in sorted({k for _, d in o + b for k in d})}
        print(f"  {rate:3d} calls/s: +{total:.0f} µs over raw ({raw:.0f}); " +
              ", ".join(f"{t.replace('foundry-telemetry-', '')} {v:+.0f}" for t, v in by.items() if abs(v) >= 1))


def main(rounds: int = 6, n: int = 300, use_yappi: bool = False) -> None:
    tmp = tempfile.mkdtemp()
    tp, mp, otel_flush = null_providers(60_000)

    tel = Telemetry(db_url=f"sqlite:///{tmp}/ledger.db", spool_dir=f"{tmp}/spool")
    tel_otel = Telemetry(db_url=f"sqlite:///{tmp}/ledger-otel.db", spool_dir=f"{tmp}/spool-otel",
                         tracer_provider=tp, meter_provider=mp)
    clients = {
        "raw": (sdk_client(mock=True), lambda: None),
        "inst": (tel.instrument(sdk_client(mock=True)), tel.flush),
        "raw+otel": (sdk_client(tp, mock=True), otel_flush),
        "inst+otel": (tel_otel.instrument(sdk_client(tp, mock=True)), tel_otel.flush),
    }
    results: dict[tuple[str, str], list[tuple[float, dict[str, float]]]] = {}
    for call in (_create, _stream):
        for client, flush in clients.values():
            block(client, call, flush, 100)  # warm-up
    if use_yappi:
        import yappi

        yappi.set_clock_type("cpu")
        yappi.start()
    for r in range(rounds):
        for mode, call in (("create", _create), ("stream", _stream)):
            names = list(clients)
            for name in names[r % 4:] + names[:r % 4]:
                client, flush = clients[name]
                results.setdefault((mode, name), []).append(block(client, call, flush, n))
    if use_yappi:
        yappi.stop()
    tel.shutdown()
    tel_otel.shutdown()
    for mode in ("create", "stream"):
        print(f"\n{mode}: CPU per call, µs (median over {rounds} rounds × {n} calls; by thread)")
        for base, ours in (("raw", "inst"), ("raw+otel", "inst+otel")):
            b, o = results[(mode, base)], results[(mode, ours)]
            total = statistics.median(x[0] - y[0] for x, y in zip(o, b, strict=True)) * 1e6
            print(f"  {ours:10} +{total:.0f} µs over {base} ({statistics.median(x[0] for x in b) * 1e6:.0f})")
            threads = sorted({k for _, d in o + b for k in d})
            for t in threads:
                delta = statistics.median(x[1].get(t, 0) - y[1].get(t, 0) for x, y in zip(o, b, strict=True))
                if abs(delta) * 1e6 >= 1:
                    print(f"      {t:34} {delta * 1e6:+8.1f}")
    if use_yappi:
        import yappi

        for thread in yappi.get_thread_stats():
            if thread.name in ("_MainThread",):
                continue
            print(f"\n== thread {thread.name} (id {thread.id}): {thread.ttot:.2f} s CPU")
            stats = yappi.get_func_stats(ctx_id=thread.id)
            stats.sort("tsub", "desc")
            for s in stats[:25]:
                print(f"  {s.tsub * 1e3:8.1f} ms self  {s.ttot * 1e3:8.1f} ms total  {s.ncall:8d}  "
                      f"{s.module.split('site-packages/')[-1]}:{s.lineno} {s.name}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
    if "--paced" in sys.argv:
        paced(*(args[:1] or [2]))
    else:
        main(*args, use_yappi="--yappi" in sys.argv)  # type: ignore[misc]
