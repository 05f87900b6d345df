"""CPU the SIGKILL journal costs per record, journal on vs off in the same run, through the writer's public
path (`write` per record, `drained` per hand-off as the pipeline calls it, `flush` at the end), plus the
pipeline's idle polling cost. Process CPU (all threads: pipeline-side journaling AND the writer thread's
seal/fsync/discard), so it is what the performance budget counts. Target: ≤ +150 µs CPU per call in total
for issue 11's budget; the journal should stay a small part of it.
Usage: python bench/journal.py [RECORDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ledger import records  # noqa: E402

from telemetry import Telemetry  # noqa: E402
from telemetry.health import Health  # noqa: E402
from telemetry.ledger.writer import LedgerWriter  # noqa: E402
from telemetry.settings import Settings  # noqa: E402

PER_DRAIN = 16  # records per pipeline hand-off: a busy process at a few hundred calls a second


def cpu_per_record(journal: bool, rows: list, tmp: str) -> float:
    tag = "on" if journal else "off"
    writer = LedgerWriter(Settings(db_url=f"sqlite:///{tmp}/{tag}-{time.time_ns()}.db", spool_dir=f"{tmp}/sp-{tag}",
                                   queue_size=len(rows) + 10, batch_size=500, journal=journal), Health())
    writer.flush(60)  # connect and upgrade before the clock starts
    t = time.process_time()
    for i, r in enumerate(rows, 1):
        writer.write(r)
        if i % PER_DRAIN == 0:
            writer.drained()
    writer.drained()
    writer.flush(600)
    cpu = time.process_time() - t
    writer.close()
    assert writer.written == len(rows), "rows were spooled: not a clean run"
    return cpu / len(rows) * 1e6


def idle_cpu_per_s(tmp: str, seconds: float = 2.0) -> float:
    tel = Telemetry(db_url=f"sqlite:///{tmp}/idle.db", spool_dir=f"{tmp}/sp-idle")
    tel.flush()
    t = time.process_time()
    time.sleep(seconds)
    cpu = time.process_time() - t
    tel.shutdown()
    return cpu / seconds * 1e3


def main(n: int = 20_000) -> None:
    tmp = tempfile.mkdtemp()
    on, off = [], []
    for _ in range(3):  # alternate so drift hits both alike
        off.append(cpu_per_record(False, records(n), tmp))
        on.append(cpu_per_record(True, records(n), tmp))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"ledger writer CPU per record, {n} records, hand-offs of {PER_DRAIN}: journal off {m_off:.1f} µs, "
          f"on {m_on:.1f} µs  → journal +{m_on - m_off:.1f} µs/record "
          f"(runs: off {' '.join(f'{x:.1f}' for x in off)}; on {' '.join(f'{x:.1f}' for x in on)})")
    print(f"idle Telemetry (pipeline polls every 5 ms while busy, sleeps when idle): "
          f"{idle_cpu_per_s(tmp):.2f} ms CPU per second")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
