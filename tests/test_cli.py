"""The `foundry-telemetry` console script, run as users run it: in a subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore

from .browser import Chromium
from .helpers import make_record

SCRIPT = str(Path(sys.executable).with_name("foundry-telemetry"))
XSS = "<script>alert(1)</script>"


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    records = []
    teams = ["search", "support", XSS]
    for i in range(30):
        r = make_record(i, days_ago=(i % 10) * 0.9 + 0.01, cost=f"0.{i + 1:04d}")
        r.team = teams[i % 3]
        r.project = "ranker" if i % 2 else "chat"
        r.deployment = "claude-sonnet-4-5" if i % 4 else "my-claude"
        r.tags = {"feature": XSS}
        if i % 7 == 0:
            r.status_code, r.error_type = 429, "rate_limit_error"
        r.latency_ms = 100.0 + i
        if i % 5 == 0:
            r.model = "claude-haiku-4-5-20251001"
        records.append(r)
    records.append(make_record(100, days_ago=40, cost="1.5"))  # past retention
    LedgerStore(get_engine(url)).insert(records)
    return url


def test_report_csv_totals_equal_ledger_sums(seeded):
    out = cli("report", "--db", seeded, "--since", "60d", "--by", "team,project", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0]) == ["team", "project", "requests", "errors", "input_tokens", "output_tokens",
                             "cache_creation_input_tokens", "cache_read_input_tokens", "cost_usd", "unpriced",
                             "count_tokens_requests", "billed_usd", "discount_usd", "ccus"]
    body, total = rows[:-1], rows[-1]
    records = [make_record(i) for i in range(30)]
    expected_cost = sum(Decimal(f"0.{i + 1:04d}") for i in range(30)) + Decimal("1.5")
    assert Decimal(total["cost_usd"]) == expected_cost == sum(Decimal(r["cost_usd"]) for r in body)
    assert int(total["requests"]) == 31 == sum(int(r["requests"]) for r in body)
    assert int(total["input_tokens"]) == sum(r.input_tokens for r in records) + make_record(100).input_tokens
    assert int(total["errors"]) == 5
    assert any(r["team"] == XSS for r in body)  # intact in CSV


def test_report_same_before_and_after_purge(seeded):
    args = ("report", "--db", seeded, "--since", "90d", "--by", "team,deployment,day", "--format", "json")
    before = cli(*args)
    purge = cli("purge", "--db", seeded, "--older-than-days", "30")
    after = cli(*args)
    assert before.returncode == purge.returncode == after.returncode == 0, purge.stderr
    assert "removed 1 rows" in purge.stdout
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert json.loads(after.stdout)["total"]["requests"] == 31


def test_report_table_json_and_month(seeded):
    table = cli("report", "--db", seeded, "--since", "60d", "--by", "month,model")
    assert table.returncode == 0 and "TOTAL" in table.stdout and "claude-sonnet-4-5-20250929" in table.stdout
    data = json.loads(cli("report", "--db", seeded, "--since", "60d", "--by", "user", "--format", "json").stdout)
    assert data["by"] == ["user"] and data["total"]["requests"] == 31
    mtd = json.loads(cli("report", "--db", seeded, "--since", "mtd", "--format", "json").stdout)
    assert mtd["month_end_forecast_usd"] is not None and Decimal(mtd["month_end_forecast_usd"]) > 0


def test_report_by_tag(seeded):
    out = cli("report", "--db", seeded, "--since", "60d", "--by", "tag:feature,team", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0])[:2] == ["tag:feature", "team"]
    assert {r["tag:feature"] for r in rows[:-1]} == {XSS, "(none)"}  # intact in CSV; (none): no such tag
    data = json.loads(cli("report", "--db", seeded, "--since", "60d", "--by", "tag:feature", "--format",
                          "json").stdout)
    assert {r["tag:feature"] for r in data["rows"]} == {XSS, "(none)"}
    assert sum(r["requests"] for r in data["rows"]) == 31
    bad = cli("report", "--db", seeded, "--by", "tag:")
    assert bad.returncode == 2 and "tag name" in bad.stderr


def test_html_escapes_and_is_self_contained(seeded, tmp_path):
    out_file = tmp_path / "r.html"
    out = cli("report", "--db", seeded, "--since", "60d", "--by", "tag:feature,team", "--format", "html",
              "-o", str(out_file))
    assert out.returncode == 0, out.stderr
    html = out_file.read_text()
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "<script" not in html


def test_lookup_by_ids_prefix_and_json(seeded):
    full = cli("lookup", "req_7", "--db", seeded, "--format", "json")
    assert full.returncode == 0, full.stderr
    data = json.loads(full.stdout)
    assert data["request_id"] == "req_7" and data["apim_request_id"] == "apim-7"
    assert data["status_code"] == 429 and data["error_type"] == "rate_limit_error"
    assert 'customDimensions["foundry.request_id"]' in data["kql"] and data["tags"] == {"feature": XSS}
    assert json.loads(cli("lookup", "apim-7", "--db", seeded, "--format", "json").stdout)["request_id"] == "req_7"
    table = cli("lookup", "apim-12", "--db", seeded)
    assert table.returncode == 0 and "req_12" in table.stdout and "Azure support ticket" in table.stdout
    missing = cli("lookup", "req_nope", "--db", seeded)
    assert missing.returncode == 1 and "no call" in missing.stderr
    ambiguous = cli("lookup", "apim-", "--db", seeded)  # a prefix of every apim id
    assert ambiguous.returncode == 2 and "matches" in ambiguous.stderr
    unique_prefix = cli("lookup", "apim-10", "--db", seeded, "--format", "json")  # exact wins
    assert json.loads(unique_prefix.stdout)["request_id"] == "req_10"


@pytest.mark.parametrize("args", [
    ("report", "--by", "color"),
    ("report", "--since", "last tuesday"),
    ("report", "--since", "2026-02-30"),
    ("report", "--since", "2026-11-20", "--until", "2026-11-01"),
    ("report", "--format", "xml"),
    ("report", "--format", "csv", "-o", "/nonexistent/dir/r.csv"),
    ("purge", "--older-than-days", "-3"),
    ("purge", "--older-than-days", "many"),
    ("alerts", "check", "--rules", "/nonexistent/rules.toml"),
    ("alerts", "check"),
    ("alerts", "check", "--error-rate", "7"),
    ("lookup",),
    ("report", "--no-such-flag"),
])
def test_bad_input_is_one_line(seeded, args):
    out = cli(*args, "--db", seeded) if args != ("lookup",) else cli("lookup")
    assert out.returncode not in (0, None)
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr


@pytest.mark.parametrize("url", ["notadb://x", "sqlite:////nonexistent/dir/ledger.db",
                                 "postgresql://nobody@127.0.0.1:9/none"])
def test_bad_db_url_is_one_line(url):
    out = cli("report", "--db", url)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr


def test_bad_price_file_env_is_one_line(tmp_path):
    bad = tmp_path / "prices.toml"
    bad.write_text("[models.x\n")
    out = cli("demo", "--requests", "1", "--db", f"sqlite:///{tmp_path / 'd.db'}",
              env={"FOUNDRY_TELEMETRY_PRICES": str(bad)})
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and lines == [lines[0]] and "not valid TOML" in lines[0]


def test_db_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'new' / 'ledger.db'}"
    out = cli("db", "upgrade", "--db", url)  # a missing folder is a mistake to report, not a path to create
    assert out.returncode == 2 and "does not exist" in out.stderr and not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    out = cli("db", "upgrade", "--db", url)
    assert out.returncode == 0 and (tmp_path / "new" / "ledger.db").exists()


def test_emulator_command(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([SCRIPT, "emulator", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/anthropic/v1/messages", headers={"api-key": "k"},
                               json={"model": "claude-haiku-4-5", "max_tokens": 8,
                                     "messages": [{"role": "user", "content": "hi"}]})
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200 and r.headers["request-id"] and r.headers["apim-request-id"]
        assert r.json()["usage"]["output_tokens"] > 0
        for path in ("/anthropic/v1/models", "/anthropic/v1/messages/batches", "/anthropic/v1/organizations/x"):
            assert httpx.get(f"http://127.0.0.1:{port}{path}", headers={"api-key": "k"}).status_code == 404
        assert httpx.post(f"http://127.0.0.1:{port}/anthropic/v1/messages", json={}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)


def test_demo_runs_end_to_end(tmp_path):
    db = tmp_path / "demo.db"
    out = subprocess.run([SCRIPT, "demo", "--requests", "40", "--db", f"sqlite:///{db}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TOTAL" in out.stdout and "For the Azure support ticket" in out.stdout
    assert (tmp_path / "report.html").stat().st_size > 2000
    from sqlalchemy import text

    with get_engine(f"sqlite:///{db}").connect() as conn:
        n, teams, streams, errors = conn.execute(text(
            "SELECT count(*), count(DISTINCT team), sum(stream), sum(error_type IS NOT NULL) "
            "FROM usage_records")).one()
    assert n >= 40 and teams >= 3 and streams >= 1 and errors >= 1


@pytest.mark.chromium
def test_html_in_headless_chromium(seeded, tmp_path):
    chromium = Chromium(tmp_path)
    page = tmp_path / "r.html"
    assert cli("report", "--db", seeded, "--since", "60d", "--format", "html", "-o", str(page)).returncode == 0
    dom = chromium.dom(page)
    for chart in ("cost-by-team", "cost-by-model", "latency-by-deployment", "errors-by-deployment"):
        start = dom.index(f'id="{chart}"')
        section = dom[start:dom.index("</figure>", start)]
        assert section.count('class="bar"') >= 2, chart
    assert "&lt;script&gt;" in dom and "<script>alert" not in dom
    assert chromium.screenshot_colors(page, "1100,1400") > 20


def test_html_charts_identical_before_and_after_purge(seeded, tmp_path):
    import re

    def charts() -> str:
        out = tmp_path / "r.html"
        assert cli("report", "--db", seeded, "--since", "60d", "--format", "html", "-o", str(out)).returncode == 0
        html = out.read_text()
        html = re.sub(r"generated [0-9: -]+ UTC", "", html)
        return html

    before = charts()
    assert cli("purge", "--db", seeded, "--older-than-days", "1").returncode == 0
    after = charts()
    assert before == after and 'id="latency-by-deployment"' in after and "class=\"bar\"" in after


def test_latency_percentiles_from_daily_histogram(tmp_path):
    from telemetry.ledger.db import get_engine, upgrade
    from telemetry.reports.stats import daily_deployment_stats, deployment_stats

    url = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(url)
    records = [make_record(i, latency_ms=float(10 * (i + 1))) for i in range(200)]  # 10 … 2000 ms
    LedgerStore(get_engine(url)).insert(records)
    import datetime as dt

    today = dt.datetime.now(dt.UTC).date()
    (rolled,) = daily_deployment_stats(get_engine(url), today - dt.timedelta(days=1), today).values()
    (raw,) = deployment_stats(get_engine(url), dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
                              dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).values()
    assert rolled.requests == 200 and rolled.errors == 0
    for q in (0.5, 0.95):
        exact = raw.p(q)
        assert abs(rolled.p(q) - exact) / exact < 0.15, (q, rolled.p(q), exact)  # within a bucket
