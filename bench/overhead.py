"""Per-call overhead of the instrumented client against the raw SDK, same emulator, same run.
A third client with a do-nothing `anthropic.Middleware` shows what the SDK's middleware dispatch costs alone.

Calls alternate raw / instrumented so drift hits both alike. Prints median and p99 per-call time and the
instrumented/raw ratio (target ≤ 1.03: export and ledger work happen off the request path).
Usage: python bench/overhead.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anthropic
from anthropic import AnthropicFoundry

sys.path.insert(0, str(Path(__file__).parent))
from _emulator import EmulatorProcess  # noqa: E402

from telemetry import Telemetry  # noqa: E402

MSG = [{"role": "user", "content": "Summarize the quarterly numbers in one line."}]


class PassThrough(anthropic.Middleware):
    def handle(self, request, call_next):  # type: ignore[no-untyped-def]
        return call_next(request)


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def main(n: int = 400) -> None:
    emu = EmulatorProcess()
    tmp = tempfile.mkdtemp()
    tel = Telemetry(db_url=f"sqlite:///{tmp}/bench.db", spool_dir=f"{tmp}/spool")
    try:
        def sdk() -> AnthropicFoundry:
            return AnthropicFoundry(api_key="bench", base_url=emu.base_url, open_telemetry=False)

        raw = sdk()
        inst = tel.instrument(sdk())
        noop = raw.with_options(middleware=[PassThrough()])
        clients = [("raw", raw), ("inst", inst), ("noop", noop)]
        for _, client in clients * 20:  # warm-up: connections, imports, schema
            client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSG)
        tel.flush()
        results: dict[str, dict[str, list[float]]] = {m: {name: [] for name, _ in clients}
                                                      for m in ("create", "stream")}
        for i in range(n):
            for name, client in clients[i % 3:] + clients[:i % 3]:
                t = time.perf_counter()
                client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSG)
                results["create"][name].append(time.perf_counter() - t)
                t = time.perf_counter()
                for _ in client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=MSG, stream=True):
                    pass
                results["stream"][name].append(time.perf_counter() - t)
        tel.flush()
        print(f"{n} calls each, emulator in another process, SDK tracing off on both clients")
        print(f"{'mode':8} {'raw med ms':>11} {'inst med ms':>12} {'ratio':>7} "
              f"{'raw p99':>9} {'inst p99':>9} {'ratio':>7}")
        for mode, r in results.items():
            rm, im = statistics.median(r["raw"]) * 1e3, statistics.median(r["inst"]) * 1e3
            rp, ip = p99(r["raw"]) * 1e3, p99(r["inst"]) * 1e3
            nm = statistics.median(r["noop"]) * 1e3
            print(f"{mode:8} {rm:11.3f} {im:12.3f} {im / rm:7.3f} {rp:9.3f} {ip:9.3f} {ip / rp:7.3f}"
                  f"   (+{(im - rm) * 1e3:.0f} µs per call at the median; a pass-through middleware alone: "
                  f"+{(nm - rm) * 1e3:.0f} µs)")
        print(f"records written: {tel.processed} (failures: {tel.health.snapshot() or 'none'})")
    finally:
        tel.shutdown()
        emu.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 400)
