"""A private PostgreSQL server for one test, so that test may really stop it (`pg_ctl stop`) mid-run without
touching the shared test server. Uses the same binaries `.ci/pg-up.sh` finds."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import REQUIRE_PG


def _bindir() -> str | None:
    found = shutil.which("initdb")
    for cand in ([os.path.dirname(found)] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin")):
        if all(os.access(os.path.join(cand, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return cand
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """initdb + pg_ctl start on a free loopback port; `stop(mode)` and `start()` as an operator would."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            if REQUIRE_PG:
                pytest.fail("PostgreSQL binaries (initdb, pg_ctl) are required here but not found")
            pytest.skip("no PostgreSQL binaries to start a private server")
        # not under pytest's tmp_path: as root the server runs as `postgres`, which cannot enter root's 0700 folders
        self.bindir, self.data, self.port = bindir, Path(tempfile.mkdtemp(prefix="ft-pg-")), _free_port()
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_pg:
            shutil.chown(self.data, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_pg, os.path.join(self.bindir, tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.data / "server.log"), "-w", "-o",
                  f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        """fast: the server ends every session (57P01) and shuts down; immediate: as after a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.data, ignore_errors=True)
