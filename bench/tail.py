"""What makes the tail of sequential calls with OpenTelemetry SDK providers on (issue 11: p99 ≤ 1.2× raw, worst
call ≤ 20 ms), and an A/B of one change to it, in ONE process.

Clients (as in bench/overhead.py: the SDK as shipped, its tracing on, one TracerProvider with a
BatchSpanProcessor and one MeterProvider with a periodic reader, both exporting to do-nothing exporters):
  raw+otel   the SDK alone on those providers
  A, B       instrumented, each pipeline set up by a knob (`--a`, `--knob`; "main" is what ships): the knobs
             set attributes of that Telemetry's own Pipeline, so both run in one process, block by block
Blocks of sequential calls rotate over the clients round by round, so drift and the neighbours' load hit all
alike; each block ends with a flush of the telemetry and the providers (outside the timed calls, inside the CPU
figure, so the background threads' CPU is charged to the calls that caused it).

`--attribute` also records, for every call, the CPU each background thread ran while it was in flight
(`pthread_getcpuclockid`) and the garbage collections that overlapped it, then says what the slowest 1 % of calls
had that the median calls did not; and how long each record waited, from its call's end until the journal holding
it was written to the OS (what a SIGKILL loses). It costs a few µs per call (alike for every client).
`--freeze` (gc.freeze() after warm-up) and `--switch-ms` (sys.setswitchinterval) measure what an application's
own process-wide settings would do; the library never sets either.

Usage: python bench/tail.py [--mock] [--attribute] [--a KNOB] [--knob KNOB] [--freeze] [--switch-ms MS]
                            [ROUNDS] [CALLS_PER_BLOCK]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _clients import null_providers  # noqa: E402
from _emulator import EmulatorProcess  # noqa: E402
from _lag import journal_lags  # noqa: E402
from overhead import _create, _stream, pct, sdk_client  # noqa: E402

from telemetry import Telemetry  # noqa: E402


# the knobs the B client can turn (each sets attributes of B's own Pipeline instance): name -> setter
def _set(**attrs: Any) -> Callable[[Telemetry], None]:
    def knob(tel: Telemetry) -> None:
        for name, value in attrs.items():
            setattr(tel._pipeline, name, value)
    return knob


_ids = random.Random()  # private (an app's random.seed cannot touch it), reseeded in a forked child
os.register_at_fork(after_in_child=_ids.seed)


def _random_id() -> str:
    """128 random bits as 32 hex digits without a system call: `os.urandom` drops the GIL for its syscall, and a
    CPU-bound caller waiting for the GIL then keeps it a whole switch interval before the worker gets it back."""
    return f"{_ids.getrandbits(128):032x}"


def _ledger_offers(every: int = 64) -> Callable[[Telemetry], None]:
    """The ledger writer offers the GIL for real (a short sleep) every `every` rows it converts and before the
    daily totals of a batch: its batch is otherwise one GIL-held stretch of several ms (a caller whose response
    arrives meanwhile waits for all of it: the writer's many brief drops, one per SQLite step, lose the hand-off
    race and restart the caller's 5 ms switch timer)."""
    def knob(tel: Telemetry) -> None:
        store = tel.ledger._store if tel.ledger else None
        if store is None:
            raise SystemExit("ledger not connected")
        row, totals = store._row, store._add_totals
        count = [0]

        def offered_row(r: Any) -> Any:
            count[0] += 1
            if count[0] % every == 0:
                time.sleep(1e-6)
            return row(r)

        def offered_totals(raw: Any, records: Any) -> None:
            time.sleep(1e-6)
            totals(raw, records)
        store._row = offered_row
        store._add_totals = offered_totals  # type: ignore[method-assign]
    return knob


def _sleep_1us() -> None:
    time.sleep(1e-6)  # a real (~50 µs, the timer slack) sleep: the waiting thread takes the GIL meanwhile


KNOBS: dict[str, Callable[[Telemetry], None]] = {
    "main": lambda tel: None,  # the pipeline as it ships
    "per-record": _set(hold_s=0.0),  # sleep(0) after every record
    "handoff": _set(yield_gil=_sleep_1us),  # every 1 ms, a sleep that lets a waiting thread in
    "handoff-per-record": _set(hold_s=0.0, yield_gil=_sleep_1us),
    "sched-yield": _set(yield_gil=os.sched_yield),
    "ledger-offers": _ledger_offers(),
    "no-catch-up": _set(catch_up_after_ns=None),  # callers never wait for a journal that is behind
    "no-offers": _set(hold_s=1e9),  # never offer the GIL inside a drain
    "random-ids": _set(new_id=_random_id),  # record ids without dropping the GIL per record
    "no-offers+random-ids": _set(hold_s=1e9, new_id=_random_id),  # no GIL drop at all inside a drain
}


def _short(name: str) -> str:
    if name == "MainThread":
        return "caller"
    if "BatchSpan" in name:
        return "span-export"
    if "MetricReader" in name or "PeriodicExporting" in name:
        return "metric-reader"
    return name.replace("foundry-telemetry-", "")


class Clocks:
    """CPU clocks of this process's background threads, read per call when attributing."""

    def __init__(self) -> None:
        self.ids: dict[str, list[int]] = {}

    def refresh(self) -> None:
        self.ids = {}
        for t in threading.enumerate():
            if t is threading.main_thread() or t.ident is None:
                continue
            try:
                self.ids.setdefault(_short(t.name), []).append(time.pthread_getcpuclockid(t.ident))
            except OSError:
                continue

    def read(self) -> dict[str, float]:
        out = {}
        for name, ids in self.ids.items():
            total = 0.0
            for cid in ids:
                with contextlib.suppress(OSError):
                    total += time.clock_gettime(cid)
            out[name] = total
        return out


class GCLog:
    """Every collection: (generation, start, end) on the perf_counter clock."""

    def __init__(self) -> None:
        self.events: list[tuple[int, float, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.events.append((info.get("generation", -1), self._start, time.perf_counter()))


GCS = GCLog()


@dataclass
class Client:
    name: str
    sync: Any
    flush: Callable[[], None]
    wall: dict[str, list[float]] = field(default_factory=lambda: {"create": [], "stream": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"create": [], "stream": []})
    calls: dict[str, list[tuple[float, float, dict[str, float]]]] = field(
        default_factory=lambda: {"create": [], "stream": []})  # (t0, t1, background CPU during the call)


def block(c: Client, mode: str, n: int, clocks: Clocks | None) -> None:
    call = _create if mode == "create" else _stream
    walls = c.wall[mode]
    clock = time.perf_counter
    cpu0 = time.process_time()
    if clocks is None:
        for _ in range(n):
            t = clock()
            call(c.sync)
            walls.append(clock() - t)
    else:
        calls = c.calls[mode]
        read, own = clocks.read, time.thread_time
        for _ in range(n):
            before = read()
            c0 = own()
            t = clock()
            call(c.sync)
            t1 = clock()
            c1 = own()
            after = read()
            walls.append(t1 - t)
            spent = {k: after[k] - before.get(k, 0.0) for k in after}
            spent["caller (own)"] = c1 - c0
            spent["caller off-CPU"] = (t1 - t) - (c1 - c0)
            calls.append((t, t1, spent))
    c.flush()
    c.cpu[mode].append((time.process_time() - cpu0) / n)


def attribution(c: Client, mode: str) -> None:
    calls = c.calls[mode]
    if not calls:
        return
    walls = sorted(t1 - t0 for t0, t1, _ in calls)
    cut = walls[int(len(walls) * 0.99)]
    lo, hi = walls[int(len(walls) * 0.25)], walls[int(len(walls) * 0.75)]
    slow = [x for x in calls if x[1] - x[0] >= cut]
    mid = [x for x in calls if lo <= x[1] - x[0] <= hi]
    events = GCS.events

    def gcs(group: list[tuple[float, float, dict[str, float]]], gen: int) -> tuple[float, float]:
        """Share of calls overlapped by a collection of `gen`, and the mean time it took inside them."""
        hit, spent = 0, 0.0
        for t0, t1, _ in group:
            inside = sum(min(e, t1) - max(s, t0) for g, s, e in events if g == gen and s < t1 and e > t0)
            hit += inside > 0
            spent += inside
        return hit / len(group), spent / len(group)

    threads = sorted({k for _, _, d in calls for k in d})
    print(f"  {c.name} {mode}: slowest 1 % ({len(slow)} calls ≥ {cut * 1e3:.2f} ms) vs the middle half "
          f"({lo * 1e3:.2f}–{hi * 1e3:.2f} ms)")
    for t in threads:
        s = statistics.mean(d.get(t, 0.0) for _, _, d in slow) * 1e6
        m = statistics.mean(d.get(t, 0.0) for _, _, d in mid) * 1e6
        share = sum(d.get(t, 0.0) > 200e-6 for _, _, d in slow) / len(slow)
        print(f"      {t:16} in the call: slow {s:7.0f} µs, middle {m:6.0f} µs; "
              f"slow calls with > 200 µs of it: {share:4.0%}")
    for gen in (0, 1, 2):
        (hs, ts), (hm, tm) = gcs(slow, gen), gcs(mid, gen)
        print(f"      gen{gen} GC overlapping: slow {hs:4.0%} ({ts * 1e6:6.0f} µs/call), "
              f"middle {hm:4.0%} ({tm * 1e6:5.0f} µs/call)")


def main(rounds: int, n: int, mock: bool, knob: str, attribute: bool, freeze: bool = False,
         switch_ms: float | None = None, knob_a: str = "main") -> None:
    if switch_ms is not None:
        sys.setswitchinterval(switch_ms / 1000)  # advice only: the application's setting, never the library's
    emu = None if mock else EmulatorProcess()
    base_url = emu.base_url if emu else "http://127.0.0.1:9/anthropic/"
    tmp = tempfile.mkdtemp()
    tp, mp, otel_flush = null_providers(60_000)

    tel_a = Telemetry(db_url=f"sqlite:///{tmp}/a.db", spool_dir=f"{tmp}/spool-a", tracer_provider=tp,
                      meter_provider=mp)
    tel_b = Telemetry(db_url=f"sqlite:///{tmp}/b.db", spool_dir=f"{tmp}/spool-b", tracer_provider=tp,
                      meter_provider=mp)
    yields = {"A": 0, "B": 0}
    lags: dict[str, list[float]] = {"A": [], "B": []}  # call end → journal written to the OS, seconds
    clients = [
        Client("raw+otel", sdk_client(tp, mock, base_url), otel_flush),
        Client(f"A:{knob_a}", tel_a.instrument(sdk_client(tp, mock, base_url)), tel_a.flush),
        Client(f"B:{knob}", tel_b.instrument(sdk_client(tp, mock, base_url)), tel_b.flush),
    ]
    clocks = Clocks() if attribute else None
    try:
        for c in clients:  # warm-up: connections, imports, first batches
            for mode in ("create", "stream"):
                block(c, mode, 50, None)
        KNOBS[knob_a](tel_a)  # after the warm-up: the ledger is connected, its store built
        KNOBS[knob](tel_b)
        if attribute:  # count the worker's offers of the GIL; time what a SIGKILL could lose
            for key, tel in (("A", tel_a), ("B", tel_b)):
                def counted(inner: Callable[[], None] = tel._pipeline.yield_gil, key: str = key) -> None:
                    yields[key] += 1
                    inner()

                tel._pipeline.yield_gil = counted
                lags[key] = journal_lags(tel._pipeline)
        for c in clients:
            c.wall = {"create": [], "stream": []}
            c.cpu = {"create": [], "stream": []}
        if clocks:
            clocks.refresh()
        GCS.events.clear()
        for lag in lags.values():
            lag.clear()
        if freeze:
            gc.freeze()  # advice only: what an application's gc.freeze() after start-up would do
        t_start = time.monotonic()
        for r in range(rounds):
            for c in clients[r % 3:] + clients[:r % 3]:
                for mode in ("create", "stream"):
                    block(c, mode, n, clocks)
        elapsed = time.monotonic() - t_start
        report(clients, rounds, n, mock, elapsed)
        if attribute:
            print("\nattribution (background-thread CPU and collections overlapping each call):")
            for c in clients:
                for mode in ("create", "stream"):
                    attribution(c, mode)
            for key, lag in lags.items():
                if lag:
                    print(f"  {key}: call end → journal in the OS (a SIGKILL loses): p50 {pct(lag, .5) * 1e3:.1f} "
                          f"ms, p99 {pct(lag, .99) * 1e3:.1f} ms, max {max(lag) * 1e3:.1f} ms")
        print(f"records: A {tel_a.processed}, B {tel_b.processed}; GIL offers by the worker: {yields}; failures: "
              f"{({**tel_a.health.snapshot(), **tel_b.health.snapshot()}) or 'none'}")
    finally:
        tel_a.shutdown()
        tel_b.shutdown()
        if emu:
            emu.close()


def report(clients: list[Client], rounds: int, n: int, mock: bool, elapsed: float) -> None:
    gens = [sum(1 for g, _, _ in GCS.events if g == k) for k in (0, 1, 2)]
    full = [e - s for g, s, e in GCS.events if g == 2]
    print(f"\n{'mock transport' if mock else 'emulator (own process)'}: {rounds} rounds × {n} sequential calls per "
          f"client and mode, {elapsed:.0f} s; collections gen0/1/2: {gens[0]}/{gens[1]}/{gens[2]}"
          + (f" (full: {statistics.median(full) * 1e3:.1f} ms median, {max(full) * 1e3:.1f} max; "
             f"{len(gc.get_objects())} objects tracked)" if full else ""))
    raw = clients[0]
    print(f"{'':10} {'mode':6} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8} {'max ms':>8} {'p99/raw':>8} "
          f"{'CPU/call µs':>12} {'ΔCPU vs raw µs (med over rounds)':>34}")
    for c in clients:
        for mode in ("create", "stream"):
            w, rw = c.wall[mode], raw.wall[mode]
            deltas = [x - y for x, y in zip(c.cpu[mode], raw.cpu[mode], strict=True)]
            print(f"{c.name:10} {mode:6} {statistics.median(w) * 1e3:8.2f} {pct(w, .99) * 1e3:8.2f} "
                  f"{pct(w, .999) * 1e3:8.2f} {max(w) * 1e3:8.1f} {pct(w, .99) / pct(rw, .99):8.2f} "
                  f"{statistics.median(c.cpu[mode]) * 1e6:12.0f} {statistics.median(deltas) * 1e6:+34.0f}")
    a, b = clients[1], clients[2]
    for mode in ("create", "stream"):
        d = [x - y for x, y in zip(b.cpu[mode], a.cpu[mode], strict=True)]
        # p99 per round (each round's block alone), B against A: the paired view of the tail
        ratio = pct(b.wall[mode], .99) / pct(a.wall[mode], .99)
        print(f"B − A {mode}: CPU/call {statistics.median(d) * 1e6:+.0f} µs (median over rounds, min "
              f"{min(d) * 1e6:+.0f}, max {max(d) * 1e6:+.0f}); p99 {ratio:.2f}×"
              f", max {max(b.wall[mode]) * 1e3:.1f} vs {max(a.wall[mode]) * 1e3:.1f} ms")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_argument("rounds", nargs="?", type=int, default=6)
    cli.add_argument("calls_per_block", nargs="?", type=int, default=300)
    cli.add_argument("--mock", action="store_true", help="in-process mock transport instead of the emulator")
    cli.add_argument("--attribute", action="store_true", help="say what the slowest 1 %% of calls had in common")
    cli.add_argument("--knob", choices=sorted(KNOBS), default="main", help="what the B client runs")
    cli.add_argument("--a", choices=sorted(KNOBS), default="main", help="what the A client runs")
    cli.add_argument("--freeze", action="store_true", help="gc.freeze() after warm-up (what an app could do)")
    cli.add_argument("--switch-ms", type=float, help="sys.setswitchinterval for the run (what an app could do)")
    a = cli.parse_args()
    main(a.rounds, a.calls_per_block, a.mock, a.knob, a.attribute, a.freeze, a.switch_ms, a.a)
