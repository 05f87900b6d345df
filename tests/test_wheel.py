"""The wheel is the product: build it, install it into a fresh venv outside the checkout, use it from an
unrelated folder exactly as the README shows. CI sets FOUNDRY_TELEMETRY_REQUIRE_WHEEL=1: a venv that cannot
be made there is a failure, not a skip."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(900)]  # building a venv is slower than a test

REPO = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("FOUNDRY_TELEMETRY_REQUIRE_WHEEL") == "1"
_BUILD_JUNK = shutil.ignore_patterns(".git", ".venv", "build", "dist", "node_modules", "__pycache__", "*.egg-info",
                                     ".pytest_cache", ".ruff_cache", "*.db", "*.db-*", "*.spool", "report.html")


@dataclass
class Installed:
    venv: Path
    work: Path  # an unrelated folder: no checkout, no telemetry/ or migrations/ next to it
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=self.work, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return self.run(str(self.venv / "bin" / "foundry-telemetry"), *args, timeout=timeout)


def _fail_or_skip(message: str) -> None:
    if REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_BUILD_JUNK)  # a clean tree: no stale build/ can leak into the wheel
    dist = root / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(dist.glob("foundry_telemetry-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # this venv's pip installs into the fresh one (`--python`): no second pip to bootstrap
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                          "--no-compile", "--prefer-binary", "--progress-bar", "off", str(wheel)],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        _fail_or_skip(f"cannot install the wheel's dependencies into a fresh venv: {pip.stderr[-1500:]}")
    work = root / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FOUNDRY_TELEMETRY_", "APPLICATIONINSIGHTS_", "OTEL_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", COLUMNS="120",
               FOUNDRY_TELEMETRY_DB_URL=f"sqlite:///{work / 'usage.db'}")
    yield Installed(venv, work, env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wheel_ships_migrations_prices_dashboards_and_types(installed: Installed):
    probe = installed.run(str(installed.venv / "bin" / "python"), "-c", textwrap.dedent("""
        import telemetry, telemetry.resources as r
        from telemetry.ledger.db import migrations_dir
        from telemetry.pricing import load_price_table
        from pathlib import Path
        pkg = Path(telemetry.__file__).parent
        print(pkg)
        print(migrations_dir())
        print(sorted(p.name for p in (migrations_dir() / "versions").glob("*.py")))
        print(sorted(p.name for p in r.dashboards_dir().rglob("*") if p.suffix in (".json", ".kql")))
        print((pkg / "py.typed").is_file(), len(load_price_table().models) > 5)
    """))
    assert probe.returncode == 0, probe.stderr
    pkg, migrations, versions, dashboards, flags = probe.stdout.splitlines()
    assert Path(pkg).is_relative_to(installed.venv) and not Path(pkg).is_relative_to(REPO)
    assert Path(migrations) == Path(pkg) / "_migrations"
    assert eval(versions) == sorted(p.name for p in (REPO / "migrations" / "versions").glob("*.py"))
    shipped = sorted(p.name for p in (REPO / "dashboards").rglob("*") if p.suffix in (".json", ".kql"))
    assert eval(dashboards) == shipped and "alerts.json" in shipped
    assert flags == "True True"


def test_installed_cli_and_instrumented_script(installed: Installed):
    version = installed.cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("foundry-telemetry 0."), version.stderr
    upgrade = installed.cli("db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert (installed.work / "usage.db").is_file()

    demo = installed.cli("demo", "--requests", "50")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "TOTAL" in demo.stdout and "For the Azure support ticket" in demo.stdout
    assert (installed.work / "report.html").stat().st_size > 2000
    with sqlite3.connect(installed.work / "usage.db") as conn:
        (demo_rows,) = conn.execute("SELECT count(*) FROM usage_records").fetchone()
    assert demo_rows >= 50

    csv = installed.cli("report", "--since", "1d", "--by", "deployment", "--format", "csv")
    assert csv.returncode == 0 and csv.stdout.startswith("deployment,requests"), csv.stderr
    target = re.search(r"foundry-telemetry lookup (\S+)", demo.stdout).group(1)
    found = installed.cli("lookup", target, "--format", "json")
    assert found.returncode == 0 and json.loads(found.stdout)["request_id"] == target, found.stderr
    quiet = installed.cli("alerts", "check", "--p95-ms", "600000", "--window", "60")
    assert quiet.returncode == 0 and "quiet" in quiet.stdout, quiet.stderr
    purge = installed.cli("purge", "--dry-run")
    assert purge.returncode == 0 and "would remove 0 rows" in purge.stdout, purge.stderr

    port = _free_port()
    emulator = subprocess.Popen([str(installed.venv / "bin" / "foundry-telemetry"), "emulator", "--port", str(port)],
                                cwd=installed.work, env=installed.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert emulator.poll() is None and time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.1)
        script = installed.work / "app.py"
        script.write_text(textwrap.dedent(f"""
            from anthropic import AnthropicFoundry; from telemetry import Telemetry, usage_context
            client = (tel := Telemetry()).instrument(AnthropicFoundry(api_key="k", base_url="http://127.0.0.1:{port}/anthropic/"))
            with usage_context(team="wheel"): print(client.messages.create(model="claude-sonnet-5-5", max_tokens=16, messages=[{{"role": "user", "content": "hi"}}]).id); tel.shutdown()
        """).lstrip())  # noqa: E501 - three lines, as a user would write them
        ran = installed.run(str(installed.venv / "bin" / "python"), str(script), timeout=120)
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert "Traceback" not in ran.stderr and "deprecated" not in ran.stderr.lower(), ran.stderr
    finally:
        emulator.terminate()
        emulator.wait(10)
    with sqlite3.connect(installed.work / "usage.db") as conn:
        landed = conn.execute("SELECT deployment, model, status_code, cost_usd IS NOT NULL, input_tokens > 0 "
                              "FROM usage_records WHERE team = 'wheel'").fetchall()
        (total,) = conn.execute("SELECT count(*) FROM usage_records").fetchone()
        (daily,) = conn.execute("SELECT sum(requests) FROM usage_daily").fetchone()
    assert len(landed) == 1 and landed[0][0] == "claude-sonnet-5-5" and landed[0][2:] == (200, 1, 1), landed
    assert total == demo_rows + 1 and daily == total


def _wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None and time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.1)


def test_installed_gateway_records_curl_calls(installed: Installed, tmp_path: Path):
    """`foundry-telemetry proxy` from the wheel, in front of the wheel's emulator: curl's JSON and SSE calls
    pass through, each becomes one priced row under the team its header names, the key is never stored, and
    SIGTERM drains and flushes."""
    if not shutil.which("curl"):
        _fail_or_skip("curl is needed to call the installed gateway")
    bin_ = installed.venv / "bin" / "foundry-telemetry"
    up, gw = _free_port(), _free_port()
    db = tmp_path / "gateway.db"
    emulator = subprocess.Popen([str(bin_), "emulator", "--port", str(up)], cwd=installed.work, env=installed.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([str(bin_), "proxy", "--upstream", f"http://127.0.0.1:{up}", "--listen",
                              f"127.0.0.1:{gw}", "--db", f"sqlite:///{db}"], cwd=installed.work, env=installed.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    key = "wheel-secret-key-7f3a"
    try:
        _wait_port(up, emulator, "emulator")
        _wait_port(gw, proxy, "gateway")
        seen = []
        for stream in (False, True):
            body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 16, "stream": stream,
                               "messages": [{"role": "user", "content": "hi"}]})
            out = installed.run("curl", "-sS", "-D", "-", "-N", f"http://127.0.0.1:{gw}/anthropic/v1/messages",
                                "-H", f"api-key: {key}", "-H", "content-type: application/json",
                                "-H", "anthropic-version: 2023-06-01", "-H", "x-foundry-team: wheel-gw",
                                "--data", body, timeout=60)
            assert out.returncode == 0 and " 200" in out.stdout.splitlines()[0], out.stdout + out.stderr
            rid = re.search(r"^request-id: (\S+)", out.stdout, re.M | re.I).group(1)
            assert ("message_stop" in out.stdout) == stream
            seen.append(rid)
        health = installed.run("curl", "-sS", f"http://127.0.0.1:{gw}/healthz")
        assert health.returncode == 0 and json.loads(health.stdout), health.stderr
    finally:
        proxy.terminate()
        _, err = proxy.communicate(timeout=60)
        emulator.terminate()
        emulator.wait(10)
    assert proxy.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert key not in err
    with sqlite3.connect(db) as conn:
        got = conn.execute("SELECT request_id, stream, status_code, cost_usd IS NOT NULL FROM usage_records "
                           "WHERE team = 'wheel-gw' ORDER BY stream").fetchall()
        (daily,) = conn.execute("SELECT sum(requests) FROM usage_daily WHERE team = 'wheel-gw'").fetchone()
    assert [(r[0], bool(r[1]), r[2], r[3]) for r in got] == [(seen[0], False, 200, 1), (seen[1], True, 200, 1)]
    assert daily == 2
    assert key.encode() not in db.read_bytes()
