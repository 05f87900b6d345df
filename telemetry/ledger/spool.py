"""Durable local spool: batches that could not reach the database wait here, one fsynced file each,
and are replayed oldest first. Replays are idempotent, so a crash mid-replay double-counts nothing."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..record import UsageRecord

_SKIP = {"chunk_gaps_ms", "server_address", "server_port", "max_tokens"}


def record_to_json(record: UsageRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.as_dict().items():
        if key in _SKIP:
            continue
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        out[key] = value
    return out


def record_from_json(data: dict[str, Any]) -> UsageRecord:
    data = dict(data)
    data["created_at"] = dt.datetime.fromisoformat(data["created_at"])
    for key in ("cost_usd", "billed_cost_usd", "discount"):
        if data.get(key) is not None:
            data[key] = Decimal(data[key])
    known = set(UsageRecord.__dataclass_fields__)
    return UsageRecord(**{k: v for k, v in data.items() if k in known})


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def append(self, records: Iterable[UsageRecord]) -> Path:
        lines = "".join(json.dumps(record_to_json(r), separators=(",", ":")) + "\n" for r in records)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}.jsonl"
        final = self.directory / name
        tmp = final.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return final

    def reject(self, records: Iterable[UsageRecord], name: str) -> Path:
        """Rows the database refused: kept for a person to look at, out of the replay queue."""
        folder = self.directory / "rejected"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(record_to_json(r), separators=(",", ":")) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())
        return path

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.jsonl"))

    def read(self, path: Path) -> list[UsageRecord]:
        records = []
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                try:
                    records.append(record_from_json(json.loads(line)))
                except (ValueError, TypeError, KeyError):
                    continue  # a torn last line from a crash: the rest of the file still replays
        return records

    def pending(self) -> int:
        return len(self.files())
