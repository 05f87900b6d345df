"""What instrumentation costs the caller's process, as ratios against the raw SDK in the same run.

The emulator runs in its own process. Clients (all `AnthropicFoundry`, the SDK's own tracing left on, as shipped):
  raw        the SDK alone                          inst       the same client through `Telemetry.instrument`
  raw+otel   the SDK, OTel SDK providers installed  inst+otel  instrumented, the same providers (as with Azure Monitor)
  peer+otel  OpenLLMetry's `opentelemetry-instrumentation-anthropic` on the raw+otel client (extra `bench`)
Providers: a TracerProvider with a BatchSpanProcessor and a MeterProvider with a periodic reader, both exporting to a
do-nothing exporter, so export serialization is not counted (it would be the same per span for every client).

Rounds interleave every client (order rotated per round) so drift and the neighbours' load hit all alike.
Each block ends with a flush of the telemetry and the providers inside the measured window, so the background
threads' CPU is charged to the calls that caused it. CPU is `time.process_time` (all threads of this process).
Figures: CPU per call (create and stream; also without the full GC passes that fell in each block, with those
apart: see FullGC), sequential p50/p99/max per call, saturated throughput with 32 asyncio
tasks and with 16 threads, and a start-up check (a fresh `Telemetry` on a new ledger: its construction time and the
worst of its first calls). Each figure is printed beside its target from issue 11.

Blocks are about as large as a ledger batch at these rates (~200–500 rows): the ledger's fixed cost per batch
(~2 ms here) is then spread as in steady use, not over a handful of calls.

Usage: python bench/overhead.py [--mock-only] [ROUNDS] [CALLS_PER_BLOCK] [CALLS_PER_THROUGHPUT_BLOCK]
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from anthropic import AnthropicFoundry, AsyncAnthropicFoundry
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).parent))
from _emulator import EmulatorProcess  # noqa: E402

from telemetry import Telemetry  # noqa: E402

MSG = [{"role": "user", "content": "Summarize the quarterly numbers in one line."}]
MODEL = "claude-haiku-4-5"
_MESSAGE = json.dumps({"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
                       "content": [{"type": "text", "text": "Revenue rose 4 %."}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 18, "output_tokens": 9}}).encode()
_SSE = b"".join(b"event: %s\ndata: %s\n\n" % (e, json.dumps(d).encode()) for e, d in [
    (b"message_start", {"type": "message_start", "message": {"id": "msg_bench", "type": "message", "role": "assistant",
                        "model": "claude-haiku-4-5-20251001", "content": [],
                        "usage": {"input_tokens": 18, "output_tokens": 1}}}),
    (b"content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                                        "text": ""}}),
    *[(b"content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": w}}) for w in ("Revenue ", "rose ", "4 %.")],
    (b"content_block_stop", {"type": "content_block_stop", "index": 0}),
    (b"message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
    (b"message_stop", {"type": "message_stop"}),
])


def mock_response(request: Any) -> Any:
    headers = {"request-id": "req_" + os.urandom(12).hex(), "apim-request-id": str(uuid.uuid4())}
    if b'"stream":true' in request.content.replace(b" ", b""):
        return httpx2.Response(200, content=_SSE, headers={**headers, "content-type": "text/event-stream"})
    return httpx2.Response(200, content=_MESSAGE, headers={**headers, "content-type": "application/json"})


class NullSpanExporter(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NullMetricExporter(MetricExporter):
    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


@dataclass
class Client:
    name: str
    sync: Any
    aio: Any
    flush: Callable[[], None]
    enter: Callable[[], None] = lambda: None
    leave: Callable[[], None] = lambda: None
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"create": [], "stream": [], "async": [],
                                                                  "threads": []})
    wall: dict[str, list[float]] = field(default_factory=lambda: {"create": [], "stream": []})
    rate: dict[str, list[float]] = field(default_factory=lambda: {"async": [], "threads": []})
    full_gc: dict[str, list[float]] = field(default_factory=lambda: {"create": [], "stream": []})  # CPU per call


class FullGC:
    """CPU spent in CPython's full (generation 2) collections. One pass scans every tracked object of the process
    (~250 k here, 50–250 ms); it runs once the objects that survived two young collections since the last one
    reach 25 % of the heap — objects kept for a while (spans waiting for their batch export, records waiting for
    their ledger batch) bring it on sooner. A pass lands in whichever block it falls in, so it is counted apart."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.passes = 0
        self._t = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t = time.process_time()
        else:
            self.cpu += time.process_time() - self._t
            self.passes += 1


FULL_GC = FullGC()


def _create(client: Any) -> None:
    client.messages.create(model=MODEL, max_tokens=32, messages=MSG)


def _stream(client: Any) -> None:
    for _ in client.messages.create(model=MODEL, max_tokens=32, messages=MSG, stream=True):
        pass


def sdk_client(tracer_provider: Any = None, mock: bool = False,
               base_url: str = "http://127.0.0.1:9/anthropic/") -> AnthropicFoundry:
    """The SDK as shipped (its own tracing on), over the emulator or an in-process mock transport."""
    options: Any = {"tracer_provider": tracer_provider} if tracer_provider else {}
    extra: Any = {"http_client": httpx2.Client(transport=httpx2.MockTransport(mock_response))} if mock else {}
    return AnthropicFoundry(api_key="bench", base_url=base_url, open_telemetry=options, **extra)


def sequential(c: Client, mode: str, n: int) -> None:
    call = _create if mode == "create" else _stream
    walls = c.wall[mode]
    c.enter()
    gc0 = FULL_GC.cpu
    cpu0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        call(c.sync)
        walls.append(time.perf_counter() - t)
    c.flush()
    c.cpu[mode].append((time.process_time() - cpu0) / n)
    c.full_gc[mode].append((FULL_GC.cpu - gc0) / n)
    c.leave()


def saturated_async(c: Client, loop: asyncio.AbstractEventLoop, n: int, tasks: int = 32) -> None:
    async def worker(k: int) -> None:
        for _ in range(k):
            await c.aio.messages.create(model=MODEL, max_tokens=32, messages=MSG)

    async def run() -> None:
        await asyncio.gather(*(worker(n // tasks) for _ in range(tasks)))

    _saturated(c, "async", (n // tasks) * tasks, lambda: loop.run_until_complete(run()))


def saturated_threads(c: Client, n: int, threads: int = 16) -> None:
    def worker(k: int) -> None:
        for _ in range(k):
            _create(c.sync)

    def run() -> None:
        pool = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()

    _saturated(c, "threads", (n // threads) * threads, run)


def _saturated(c: Client, key: str, done: int, run: Any) -> None:
    """One saturated block: `run()` makes `done` calls; CPU per call and calls per second, flush included."""
    c.enter()
    cpu0, t0 = time.process_time(), time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    c.flush()
    c.cpu[key].append((time.process_time() - cpu0) / done)
    c.rate[key].append(done / wall)
    c.leave()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], scale: float = 1.0, fmt: str = "{:.0f}") -> str:
    """median [min–max] over rounds."""
    if not values:
        return "—"
    return f"{fmt.format(med(values) * scale)} [{fmt.format(min(values) * scale)}–{fmt.format(max(values) * scale)}]"


def startup(emu: EmulatorProcess, tmp: str, raw: Any) -> tuple[float, float, float, float]:
    """A fresh Telemetry on a new ledger: construction time, and the worst of its first 60 calls against raw's."""
    t = time.perf_counter()
    tel = Telemetry(db_url=f"sqlite:///{tmp}/fresh.db", spool_dir=f"{tmp}/fresh-spool", batch_size=20,
                    batch_interval_s=0.05)
    built = time.perf_counter() - t
    try:
        client = tel.instrument(AnthropicFoundry(api_key="bench", base_url=emu.base_url))
        worst_inst = worst_raw = 0.0
        for _ in range(60):  # small batches: the ledger's first writes land among these calls
            t = time.perf_counter()
            _create(client)
            worst_inst = max(worst_inst, time.perf_counter() - t)
            t = time.perf_counter()
            _create(raw)
            worst_raw = max(worst_raw, time.perf_counter() - t)
        t = time.perf_counter()
        tel.flush()
        flushed = time.perf_counter() - t
    finally:
        tel.shutdown()
    return built, worst_inst, worst_raw, flushed


def main(rounds: int = 5, n: int = 200, n_sat: int = 320, mock_only: bool = False) -> None:
    n_mock = max(n, 300)  # a block about as large as a ledger batch at this rate: batch costs amortize as in use
    emu = EmulatorProcess()
    tmp = tempfile.mkdtemp()
    loop = asyncio.new_event_loop()
    span_exporter = NullSpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(span_exporter))
    mp = MeterProvider(metric_readers=[PeriodicExportingMetricReader(NullMetricExporter(),
                                                                     export_interval_millis=60_000)])

    def otel_flush() -> None:
        tp.force_flush()
        mp.force_flush()

    def sdk(otel: bool, mock: bool = False) -> tuple[Any, Any]:
        options: Any = {"tracer_provider": tp} if otel else {}
        return (sdk_client(tp if otel else None, mock, emu.base_url),
                AsyncAnthropicFoundry(api_key="bench", base_url=emu.base_url, open_telemetry=options))

    tel = Telemetry(db_url=f"sqlite:///{tmp}/ledger.db", spool_dir=f"{tmp}/spool")
    tel_otel = Telemetry(db_url=f"sqlite:///{tmp}/ledger-otel.db", spool_dir=f"{tmp}/spool-otel",
                         tracer_provider=tp, meter_provider=mp)
    try:
        raw_s, raw_a = sdk(False)
        rawo_s, rawo_a = sdk(True)
        inst_s, inst_a = sdk(False)
        insto_s, insto_a = sdk(True)
        clients = [
            Client("raw", raw_s, raw_a, lambda: None),
            Client("inst", tel.instrument(inst_s), tel.instrument(inst_a), lambda: tel.flush()),
            Client("raw+otel", rawo_s, rawo_a, otel_flush),
            Client("inst+otel", tel_otel.instrument(insto_s), tel_otel.instrument(insto_a),
                   lambda: tel_otel.flush()),
        ]
        # the same clients over an in-process mock transport: no network, no emulator, far less scheduling noise
        mocks = [
            Client("raw", sdk(False, True)[0], None, lambda: None),
            Client("inst", tel.instrument(sdk(False, True)[0]), None, lambda: tel.flush()),
            Client("raw+otel", sdk(True, True)[0], None, otel_flush),
            Client("inst+otel", tel_otel.instrument(sdk(True, True)[0]), None, lambda: tel_otel.flush()),
        ]
        peer_version = None
        try:
            from importlib.metadata import version

            from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor

            peer_version = version("opentelemetry-instrumentation-anthropic")
            instrumentor = AnthropicInstrumentor()
            po_s, po_a = sdk(True)
            on, off = lambda: instrumentor.instrument(tracer_provider=tp, meter_provider=mp), instrumentor.uninstrument
            clients.append(Client("peer+otel", po_s, po_a, otel_flush, enter=on, leave=off))
            mocks.append(Client("peer+otel", sdk(True, True)[0], None, otel_flush, enter=on, leave=off))
        except ImportError:
            pass

        for c in clients:  # warm-up: connections, imports, schema, first batches
            sequential(c, "create", 30)
            sequential(c, "stream", 30)
            saturated_async(c, loop, 64)
            saturated_threads(c, 32)
        for c in mocks:
            sequential(c, "create", 100)
            sequential(c, "stream", 100)
        for c in clients + mocks:  # warm-up is not measured
            c.wall = {"create": [], "stream": []}
            c.cpu = {k: [] for k in c.cpu}
            c.rate = {k: [] for k in c.rate}
            c.full_gc = {k: [] for k in c.full_gc}

        for r in range(rounds):
            order = clients[r % len(clients):] + clients[:r % len(clients)]
            for c in order if not mock_only else ():
                sequential(c, "create", n)
                sequential(c, "stream", n)
            for c in order if not mock_only else ():
                saturated_async(c, loop, n_sat)
                saturated_threads(c, n_sat)
            for c in mocks[r % len(mocks):] + mocks[:r % len(mocks)]:
                sequential(c, "create", n_mock)
                sequential(c, "stream", n_mock)
            print(f"  round {r + 1}/{rounds} done", file=sys.stderr)

        if not mock_only:
            built, worst_inst, worst_raw, flushed = startup(emu, tmp, raw_s)
            report(clients, rounds, n, n_sat, peer_version)
        report_mock(mocks, rounds, n_mock)
        if mock_only:
            return
        print(f"\nstart-up, fresh ledger: Telemetry(...) {built * 1e3:.0f} ms; "
              f"worst of its first 60 calls {worst_inst * 1e3:.1f} ms vs raw {worst_raw * 1e3:.1f} ms "
              f"(target ≤ 20 ms); flush after {flushed * 1e3:.0f} ms")
        print(f"records written: {tel.processed + tel_otel.processed}; failures: "
              f"{({**tel.health.snapshot(), **tel_otel.health.snapshot()}) or 'none'}")
    finally:
        tel.shutdown()
        tel_otel.shutdown()
        loop.close()
        emu.close()


def line(figure: str, value: str, peer_value: str, target: str, ok: bool | None) -> None:
    verdict = "" if ok is None else ("  ok" if ok else "  MISSED")
    print(f"{figure:44} {value:52} {peer_value:34} {target:18}{verdict}")


def cpu_lines(by: dict[str, Client], modes: Sequence[str]) -> None:
    peer = by.get("peer+otel")
    for mode in modes:
        for base, ours, budget in (("raw", "inst", 60e-6), ("raw+otel", "inst+otel", 150e-6)):
            b, o = by[base].cpu[mode], by[ours].cpu[mode]
            deltas = [x - y for x, y in zip(o, b, strict=True)]  # same round, same neighbours
            label = {"create": "CPU/call create", "stream": "CPU/call stream", "async": "CPU/call, 32 tasks",
                     "threads": "CPU/call, 16 threads"}[mode]
            value = f"{spread(deltas, 1e6, '{:+.0f}')} µs ({med(o) / med(b):.2f}×, raw {med(b) * 1e6:.0f})"
            least = (min(o) - min(b)) * 1e6  # load only ever adds CPU: least against least is the quiet-machine view
            value += f" least {least:+.0f}"
            pv = "—"
            if peer and base == "raw+otel":
                pdeltas = [x - y for x, y in zip(peer.cpu[mode], b, strict=True)]
                pv = f"{spread(pdeltas, 1e6, '{:+.0f}')} µs least {(min(peer.cpu[mode]) - min(b)) * 1e6:+.0f}"
            target = f"≤ +{budget * 1e6:.0f} µs" + ("" if mode == "create" else " (create's)")
            line(f"{label}, {'OTel on' if 'otel' in base else 'ledger only'}", value, pv, target,
                 med(deltas) <= budget)


def gc_lines(by: dict[str, Client], modes: Sequence[str]) -> None:
    """The same CPU without the full collections that fell in each block, and those apart (per call, over all
    blocks): the steady figure, and what keeping objects alive for a while costs."""
    for mode in modes:
        for base, ours in (("raw", "inst"), ("raw+otel", "inst+otel")):
            b, o = by[base], by[ours]
            if not b.full_gc[mode]:
                continue
            deltas = [(x - gx) - (y - gy) for x, gx, y, gy in zip(o.cpu[mode], o.full_gc[mode], b.cpu[mode],
                                                                   b.full_gc[mode], strict=True)]
            mean_gc = [statistics.mean(c.full_gc[mode]) * 1e6 for c in (o, b)]
            gcs = f"full GC {mean_gc[0]:.0f} vs {mean_gc[1]:.0f}"
            peer = by.get("peer+otel")
            pv = "—"
            if peer and base == "raw+otel" and peer.full_gc[mode]:
                pd = [(x - gx) - (y - gy) for x, gx, y, gy in zip(peer.cpu[mode], peer.full_gc[mode], b.cpu[mode],
                                                                   b.full_gc[mode], strict=True)]
                pv = f"{spread(pd, 1e6, '{:+.0f}')} µs"
            line(f"  {mode} without full GC, {'OTel on' if 'otel' in base else 'ledger only'}",
                 f"{spread(deltas, 1e6, '{:+.0f}')} µs; {gcs} µs/call", pv, "", None)


def report_mock(mocks: list[Client], rounds: int, n: int) -> None:
    print(f"\nthe same, over an in-process mock transport (no network, no emulator: the steadiest view of the CPU "
          f"the instrumentation adds), {rounds} rounds × {n} calls")
    print(f"{'figure':44} {'foundry-telemetry':52} {'OpenLLMetry':34} {'target':18}")
    by = {c.name: c for c in mocks}
    cpu_lines(by, ("create", "stream"))
    gc_lines(by, ("create", "stream"))
    print(f"full GC passes in all: {FULL_GC.passes}, {FULL_GC.cpu * 1e3:.0f} ms CPU "
          f"({len(gc.get_objects())} objects tracked now)")


def report(clients: list[Client], rounds: int, n: int, n_sat: int, peer_version: str | None) -> None:
    by = {c.name: c for c in clients}
    peer = by.get("peer+otel")
    print(f"\n{rounds} rounds × {n} sequential calls per client and mode, {n_sat} calls per saturated block; "
          f"CPU = process_time, all threads; medians over rounds [min–max]")
    print("peer: " + (f"opentelemetry-instrumentation-anthropic {peer_version}" if peer else
                      "not installed (pip install -e '.[bench]')"))

    print(f"\n{'figure':44} {'foundry-telemetry':52} {'OpenLLMetry':34} {'target':18}")
    cpu_lines(by, ("create", "stream", "async", "threads"))
    gc_lines(by, ("create", "stream"))
    for mode, label in (("async", "throughput, 32 asyncio tasks"), ("threads", "throughput, 16 threads")):
        for base, ours in (("raw", "inst"), ("raw+otel", "inst+otel")):
            ratios = [x / y for x, y in zip(by[ours].rate[mode], by[base].rate[mode], strict=True)]
            pv = "—"
            if peer and base == "raw+otel":
                pv = spread([x / y for x, y in zip(peer.rate[mode], by[base].rate[mode], strict=True)], 1, "{:.2f}")
                pv += "×"
            line(f"{label}, {'OTel on' if 'otel' in base else 'ledger only'}",
                 f"{spread(ratios, 1, '{:.2f}')}× (raw {med(by[base].rate[mode]):.0f}/s)", pv, "≥ 0.95×",
                 med(ratios) >= 0.95)
    for mode in ("create", "stream"):
        for base, ours in (("raw", "inst"), ("raw+otel", "inst+otel")):
            b, o = by[base].wall[mode], by[ours].wall[mode]
            suffix = "OTel on" if "otel" in base else "ledger only"
            line(f"p50 per call {mode}, {suffix}", f"{med(o) * 1e3:.2f} ms ({med(o) / med(b):.3f}× raw "
                 f"{med(b) * 1e3:.2f})", f"{med(peer.wall[mode]) / med(b):.3f}×" if peer and "otel" in base else "—",
                 "—", None)
            line(f"p99 per call {mode}, {suffix}", f"{pct(o, .99) * 1e3:.2f} ms ({pct(o, .99) / pct(b, .99):.2f}× raw "
                 f"{pct(b, .99) * 1e3:.2f})",
                 f"{pct(peer.wall[mode], .99) / pct(b, .99):.2f}×" if peer and "otel" in base else "—",
                 "≤ 1.2× raw p99", pct(o, .99) <= 1.2 * pct(b, .99))
            line(f"max per call {mode}, {suffix}", f"{max(o) * 1e3:.1f} ms (raw {max(b) * 1e3:.1f})",
                 f"{max(peer.wall[mode]) * 1e3:.1f} ms" if peer and "otel" in base else "—", "≤ 20 ms",
                 max(o) <= 0.020)


if __name__ == "__main__":
    import argparse

    cli = argparse.ArgumentParser(description="What instrumentation costs the caller's process (issue 11).")
    cli.add_argument("rounds", nargs="?", type=int, default=5)
    cli.add_argument("calls_per_block", nargs="?", type=int, default=200)
    cli.add_argument("calls_per_throughput_block", nargs="?", type=int, default=320)
    cli.add_argument("--mock-only", action="store_true", help="in-process mock transport only, no emulator")
    a = cli.parse_args()
    if min(a.rounds, a.calls_per_block, a.calls_per_throughput_block) < 1:
        cli.error("counts must be positive")
    main(a.rounds, a.calls_per_block, a.calls_per_throughput_block, mock_only=a.mock_only)
