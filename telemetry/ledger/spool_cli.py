"""`foundry-telemetry spool [status|requeue]`: what waits in a ledger's spool, what was set aside and why,
and putting set-aside rows back in the replay queue once the cause is fixed. Reads files only: it never
opens, creates or alters a database."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spool import REJECT_KEY, Spool


@dataclass
class SpoolStatus:
    directory: str
    pending_files: int = 0
    pending_records: int = 0
    journal_segments: int = 0
    rejected_records: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    quarantined_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def status(directory: Path) -> SpoolStatus:
    spool = Spool(directory)
    out = SpoolStatus(str(directory))
    for path in spool.files():
        out.pending_files += 1
        out.pending_records += _count_lines(path)
    journal = directory / "journal"
    if journal.is_dir():
        out.journal_segments = sum(1 for n in os.listdir(journal) if n.endswith(".jnl"))
    reasons: Counter[str] = Counter()
    if spool.rejected_dir.is_dir():
        for path in sorted(spool.rejected_dir.glob("*.jsonl")):
            with open(path, "rb") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    out.rejected_records += 1
                    try:
                        why = json.loads(line).get(REJECT_KEY, {}).get("reason") or "unknown"
                    except (ValueError, AttributeError):
                        why = "unreadable line"
                    reasons[str(why)] += 1
    out.reasons = dict(reasons.most_common())
    if spool.quarantine_dir.is_dir():
        out.quarantined_files = sorted(str(p) for p in spool.quarantine_dir.iterdir() if p.is_file())
    return out


def requeue(directory: Path) -> tuple[int, int]:
    """Move every set-aside file back into the replay queue; returns (files, records)."""
    spool = Spool(directory)
    files = records = 0
    if not spool.rejected_dir.is_dir():
        return 0, 0
    for path in sorted(spool.rejected_dir.glob("*.jsonl")):
        n = _count_lines(path)
        target = directory / f"{path.stem}-requeued-{os.getpid()}.jsonl"
        os.replace(path, target)  # same filesystem: atomic; the reason field is ignored on replay
        files += 1
        records += n
    return files, records


def render(st: SpoolStatus) -> str:
    lines = [f"spool {st.directory}",
             f"  pending:     {st.pending_records} records in {st.pending_files} files "
             f"(replayed when the ledger answers)",
             f"  journal:     {st.journal_segments} segments (recovered by the next writer if their process died)",
             f"  set aside:   {st.rejected_records} records"
             + (" (`foundry-telemetry spool requeue` after fixing the cause)" if st.rejected_records else "")]
    for why, n in st.reasons.items():
        lines.append(f"    {n:>8}  {why}")
    lines.append(f"  quarantine:  {len(st.quarantined_files)} files of damaged lines")
    lines.extend(f"    {p}" for p in st.quarantined_files)
    return "\n".join(lines)
