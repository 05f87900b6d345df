"""How long each record waits, after its call ended, for the journal holding it to reach the OS (what a SIGKILL
would lose), measured on one pipeline: bench/journal_lag.py and bench/tail.py --attribute."""

from __future__ import annotations

import time
from typing import Any


def journal_lags(pipeline: Any) -> list[float]:
    """Seconds, one per record, appended as the pipeline goes: from the capture's end to the pipeline's next
    drained hook after its record (the journal's buffer written to the OS; from there a SIGKILL loses none)."""
    lags: list[float] = []
    pending: list[int] = []
    process = pipeline._process

    def timed(capture: Any) -> None:
        process(capture)
        pending.append(capture.t_end or capture.t0)

    def synced() -> None:  # after the ledger writer's own hook, which writes the journal out
        now = time.perf_counter_ns()
        lags.extend((now - end) / 1e9 for end in pending)
        pending.clear()

    pipeline._process = timed
    pipeline._drained.append(synced)
    return lags
