"""Shared by the finance tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any


def runner(capsys: Any) -> Callable[..., subprocess.CompletedProcess]:
    """The console script's `main`, in-process (a subprocess costs ~1.5 s here); each finance test file also
    runs the installed script itself at least once."""
    from telemetry import cli as cli_module

    def invoke(*args: str) -> subprocess.CompletedProcess:
        try:
            cli_module.main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return invoke
