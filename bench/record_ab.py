"""The per-record stages, old code against new in ONE process: build_record, PriceTable.cost, Journal.add and
the request path, each timed alone in a tight loop, old and new alternated block by block.

The old code is a git ref's `telemetry` package, extracted to a temporary folder under another name (the package
imports itself only relatively), so both run side by side on captures each made itself from the same mock SDK
calls. Figures: per stage, the median and min over rounds of old and new (µs, `time.process_time`), their ratio,
and function calls per record (cProfile: exact, load-independent).
With --instructions, each stage is counted instead by callgrind (bench/_callgrind.py): instructions
per call, the same whatever else the machine runs (needs valgrind and gcc; ~1–2 min).
Usage: python bench/record_ab.py [REF (default main)] [ROUNDS (default 15)] [N per block (default 200)]
       python bench/record_ab.py --instructions [REF] [N per block (default 100)]
"""

from __future__ import annotations

import cProfile
import gc
import importlib
import pstats
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).parent))
from overhead import _MESSAGE, _SSE, MODEL, MSG, _create, _stream, sdk_client  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def old_package(ref: str, where: Path) -> ModuleType:
    """`ref`'s telemetry package, importable as `telemetry_ab_old`."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "telemetry"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    (where / "telemetry").rename(where / "telemetry_ab_old")
    sys.path.insert(0, str(where))
    return importlib.import_module("telemetry_ab_old")


# what a Foundry response carries besides the body (~20 headers), for the "as a network delivers it" variants
NET_HEADERS = [
    ("date", "Tue, 01 Dec 2026 16:00:00 GMT"), ("connection", "keep-alive"),
    ("request-id", "req_011CVabcdef0123456789"),
    ("apim-request-id", "0f8e0e5e-1c3b-4b8f-9d55-3f1f7b2d8a11"), ("strict-transport-security", "max-age=31536000"),
    ("x-content-type-options", "nosniff"), ("x-ms-region", "East US 2"), ("x-ms-rai-invoked", "true"),
    *[(f"anthropic-ratelimit-{kind}-{what}", "2026-12-01T16:00:01Z" if what == "reset" else "4000")
      for kind in ("input-tokens", "output-tokens", "requests") for what in ("limit", "remaining", "reset")],
    ("x-envoy-upstream-service-time", "512"), ("azureml-model-session", "d20251101-1-12345678"),
]


def _chunked_sse(request: Any) -> Any:
    """The stream as a network delivers it: one chunk per event, through the tee."""
    parts = [p + b"\n\n" for p in _SSE.split(b"\n\n") if p]
    return httpx2.Response(200, headers=[*NET_HEADERS, ("content-type", "text/event-stream")], content=iter(parts))


def _chunked_json(request: Any) -> Any:
    return httpx2.Response(200, headers=[*NET_HEADERS, ("content-type", "application/json")], content=iter([_MESSAGE]))


def _stream_chunked(client: Any) -> None:
    for _ in client.messages.create(model=MODEL, max_tokens=32, messages=MSG, stream=True):
        pass


class Side:
    """One package's instrumented clients, its captures and its stage callables."""

    def __init__(self, pkg: ModuleType, name: str, tmp: Path) -> None:
        self.name = name
        parse = importlib.import_module(f"{pkg.__name__}.capture.parse")
        journal = importlib.import_module(f"{pkg.__name__}.ledger.journal")
        self.build_record = parse.build_record
        self.tel = pkg.Telemetry(db_url=f"sqlite:///{tmp}/{name}.db", ledger=False)
        self.captures: list[Any] = []
        self.tel._pipeline._process = self.captures.append
        self.mock = self.tel.instrument(sdk_client(mock=True))
        self.net_sse = self.tel.instrument(sdk_client().with_options(
            http_client=httpx2.Client(transport=httpx2.MockTransport(_chunked_sse))))
        self.net_json = self.tel.instrument(sdk_client().with_options(
            http_client=httpx2.Client(transport=httpx2.MockTransport(_chunked_json))))
        self.kinds: dict[str, list[Any]] = {}
        for kind, client, call in (("create", self.mock, _create), ("stream", self.mock, _stream),
                                   ("create, tee'd, 20 headers", self.net_json, _create),
                                   ("stream, 1 chunk/event, 20 headers", self.net_sse, _stream_chunked)):
            self.captures.clear()
            for _ in range(20):
                call(client)
            self.tel.flush()
            self.kinds[kind] = list(self.captures)
        self.prices = self.tel.prices
        self.journal = journal.Journal(tmp / f"journal-{name}")

    def request_calls(self) -> list[tuple[str, Callable[[], Any]]]:
        return [("create", lambda: _create(self.mock)), ("stream", lambda: _stream(self.mock)),
                ("create, tee'd, 20 headers", lambda: _create(self.net_json)),
                ("stream, 1 chunk/event, 20 headers", lambda: _stream_chunked(self.net_sse))]


def cycle(items: list[Any]) -> Iterator[Any]:
    while True:
        yield from items


def timed(fn: Callable[[], Any], n: int) -> float:
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


def calls(fn: Callable[[], Any], n: int) -> float:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    return sum(st[1] for st in pstats.Stats(prof).stats.values()) / n  # type: ignore[attr-defined]


def build_stages(ref: str, tmp: Path) -> tuple[list[Side], dict[str, list[Callable[[], Any]]]]:
    import telemetry
    sides = [Side(old_package(ref, tmp / "old"), "old", tmp), Side(telemetry, "new", tmp)]
    stages: dict[str, list[Callable[[], Any]]] = {}
    for side in sides:
        for kind, caps in side.kinds.items():
            it = cycle(caps)
            stages.setdefault(f"build_record, {kind}", []).append(
                lambda s=side, it=it: s.build_record(next(it)))
        recs = [side.build_record(c) for c in side.kinds["create"] + side.kinds["stream"]]
        for r in recs:
            r.cost_usd = side.prices.cost(r)
        it = cycle(recs)
        stages.setdefault("PriceTable.cost", []).append(lambda s=side, it=it: s.prices.cost(next(it)))
        it2 = cycle(recs)
        stages.setdefault("Journal.add", []).append(lambda s=side, it=it2: s.journal.add(next(it)))
        for label, fn in side.request_calls():
            stages.setdefault(f"SDK call (request path + SDK), {label}", []).append(fn)
    return sides, stages


def instructions(ref: str, n: int, child_lib: str | None = None) -> None:
    """Every stage old and new under callgrind (this script again, as `--child`), counters zeroed and dumped
    around each block."""
    from _callgrind import Counters, counts

    if child_lib is not None:
        cg = Counters(child_lib)
        sides, stages = build_stages(ref, Path(tempfile.mkdtemp()))
        for key, fns in stages.items():
            m = n if not key.startswith("SDK call") else max(n // 5, 5)
            for side, fn in zip(sides, fns, strict=True):
                for _ in range(10):
                    fn()
                gc.collect()
                gc.disable()  # a collection lands in whichever block it falls in: none in any
                cg.zero()
                for _ in range(m):
                    fn()
                cg.dump(f"{key}|{side.name}|{m}")
                gc.enable()
        for side in sides:
            side.tel.shutdown()
        return
    found: dict[str, dict[str, float]] = {}
    for name, total in counts(__file__, lambda lib: ["--child", lib, ref, str(n)]).items():
        key, side, m = name.rsplit("|", 2)
        found.setdefault(key, {})[side] = total / int(m)
    print(f"instructions per call (callgrind, GC off in the blocks), old = {ref}, new = working tree, {n} calls a "
          f"block ({max(n // 5, 5)} for SDK calls)")
    print(f"{'stage':52} {'old':>10} {'new':>10} {'new/old':>8}")
    for key, got in found.items():
        print(f"{key:52} {got['old']:10,.0f} {got['new']:10,.0f} {got['new'] / got['old']:8.2f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        instructions(sys.argv[3], int(sys.argv[4]), child_lib=sys.argv[2])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--instructions":
        instructions(sys.argv[2] if len(sys.argv) > 2 else "main", int(sys.argv[3]) if len(sys.argv) > 3 else 100)
        return
    ref = sys.argv[1] if len(sys.argv) > 1 else "main"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    sides, stages = build_stages(ref, Path(tempfile.mkdtemp()))
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in stages}
    counts = {k: (calls(old, 50), calls(new, 50)) for k, (old, new) in stages.items()}
    for r in range(rounds):
        for key, (old, new) in stages.items():
            m = n if not key.startswith("SDK call") else max(n // 4, 20)
            order = ((0, old), (1, new)) if r % 2 == 0 else ((1, new), (0, old))
            for i, fn in order:
                results[key][i].append(timed(fn, m))
    for side in sides:
        side.tel.shutdown()
    print(f"old = {ref}, new = working tree; {rounds} rounds, median [min] µs per call, old/new alternated")
    print(f"{'stage':44} {'old':>15} {'new':>15} {'new/old':>8} {'calls old → new':>17}")
    for key, (old, new) in results.items():
        mo, mn = statistics.median(old), statistics.median(new)
        co, cn = counts[key]
        print(f"{key:44} {mo:7.1f} [{min(old):5.1f}] {mn:7.1f} [{min(new):5.1f}] {mn / mo:8.2f} "
              f"{co:8.0f} → {cn:.0f}")


if __name__ == "__main__":
    main()
