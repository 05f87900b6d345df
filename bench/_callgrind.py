"""Counting instructions with valgrind's callgrind, for the benches that want a load-independent figure.

The parent runs a script again under callgrind (`counts`); the child zeroes the counters before a block and
dumps them after it under a name (`Counters`), through callgrind's client requests (a tiny C library built
here with gcc, since they are machine instructions Python cannot issue). All threads are counted.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

_C = r"""
#include <valgrind/callgrind.h>
void zero(void) { CALLGRIND_ZERO_STATS; }
void dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""


class Counters:
    """In the child: `zero()` before a block, `dump(name)` after it."""

    def __init__(self, lib: str) -> None:
        self._lib = ctypes.CDLL(lib)

    def zero(self) -> None:
        self._lib.zero()

    def dump(self, name: str) -> None:
        self._lib.dump(name.encode())


def counts(script: str, argv: Callable[[str], list[str]]) -> dict[str, int]:
    """Run `python script *argv(lib)` under callgrind; instructions of every named dump, by name.
    Exits with a one-line message when valgrind or gcc is missing."""
    name = Path(script).name
    if not shutil.which("valgrind") or not shutil.which("gcc"):
        sys.exit(f"bench/{name}: needs valgrind and gcc on PATH")
    tmp = Path(tempfile.mkdtemp())
    (tmp / "cg.c").write_text(_C)
    lib = tmp / "cg.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(tmp / "cg.c")], check=True)
    out = tmp / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script,
                    *argv(str(lib))], check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
                   stderr=subprocess.DEVNULL)
    found: dict[str, int] = {}
    for path in tmp.glob(out.name + "*"):
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (.+)$", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if trigger and total:
            found[trigger.group(1).strip()] = int(total.group(1))
    return found
