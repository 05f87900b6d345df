"""The SIGKILL window as it is lived: how long each call's record waits, after the call returned, before it is in
the journal in the page cache (what a SIGKILL cannot take), with the journal catch-up on (default: a call ending
while the journal is over 7 ms behind waits for it) and off, alternated block by block in one process; beside
each, CPU per call and the call's own latency (p50/p99/max), and the raw SDK's in the same rounds.

Over the in-process mock transport the caller is CPU-bound and keeps the GIL (the worst case for a background
thread); against the emulator (its own process, real sockets) the caller lets go of it while it waits.
With `otel`, both clients run with OTel SDK providers (to do-nothing exporters), as with Azure Monitor.
Usage: python bench/journal_lag.py [mock|emulator] [ROUNDS (default 8)] [N per block (default 300)] [otel]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _clients import null_providers  # noqa: E402
from _lag import journal_lags  # noqa: E402
from overhead import _create, pct, sdk_client  # noqa: E402

from telemetry import Telemetry  # noqa: E402
from telemetry.settings import Settings  # noqa: E402


def main(where: str = "mock", rounds: int = 8, n: int = 300, otel: bool = False) -> None:
    tp, mp, otel_flush = null_providers() if otel else (None, None, lambda: None)
    tel = Telemetry(db_url=f"sqlite:///{tempfile.mkdtemp()}/l.db", tracer_provider=tp, meter_provider=mp)
    emulator = None
    if where == "emulator":
        from _emulator import EmulatorProcess

        emulator = EmulatorProcess()
        raw, inst = (sdk_client(tp, base_url=emulator.base_url),
                     tel.instrument(sdk_client(tp, base_url=emulator.base_url)))
    else:
        raw, inst = sdk_client(tp, mock=True), tel.instrument(sdk_client(tp, mock=True))
    for _ in range(100):
        _create(raw)
        _create(inst)
    tel.flush()
    pipe = tel._pipeline
    lags = journal_lags(pipe)  # seconds
    catch_up_ns = Settings().journal_catch_up_ms * 1_000_000
    runs: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "wall": [], "lag": []} for k in ("raw", "off", "on")}
    for r in range(rounds):
        for mode in (("raw", "off", "on") if r % 2 == 0 else ("on", "off", "raw")):
            pipe.catch_up_after_ns = catch_up_ns if mode == "on" else None
            client, got = (raw if mode == "raw" else inst), runs[mode]
            lags.clear()
            cpu = time.process_time()
            for _ in range(n):
                t = time.perf_counter()
                _create(client)
                got["wall"].append((time.perf_counter() - t) * 1000)
            tel.flush()
            otel_flush()
            got["cpu"].append((time.process_time() - cpu) / n * 1e6)
            got["lag"].extend(lag * 1000 for lag in lags)
    waits, in_vain = pipe.catch_ups, pipe.catch_up_timeouts
    tel.shutdown()
    if emulator is not None:
        emulator.close()
    print(f"{where}{', OTel on' if otel else ''}: "
          f"{rounds} rounds × {n} create calls a block; catch-up waits {waits} ({in_vain} in vain)")
    print(f"{'':12} {'CPU/call µs':>11} {'call p50/p99/max ms':>22} {'record → journal p50/p90/p99/max ms':>38}")
    for mode, got in runs.items():
        wall, lag = got["wall"], got["lag"]
        lags = (f"{pct(lag, .5):.1f} / {pct(lag, .9):.1f} / {pct(lag, .99):.1f} / {max(lag):.1f}" if lag
                else "—")
        print(f"{'raw SDK' if mode == 'raw' else 'catch-up ' + mode:12} {statistics.median(got['cpu']):11.0f} "
              f"{pct(wall, .5):8.2f} / {pct(wall, .99):.2f} / {max(wall):5.1f} {lags:>38}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "mock", int(sys.argv[2]) if len(sys.argv) > 2 else 8,
         int(sys.argv[3]) if len(sys.argv) > 3 else 300, "otel" in sys.argv[4:])
