"""Alert rules on seeded ledgers: fire above the threshold, quiet at it; webhook; rule files."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from telemetry.alerts import RuleError, evaluate, load_rules, make_rule
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore

from .helpers import make_record
from .test_cli import cli

MINUTE = 1 / 1440


@pytest.fixture
def ledger(db_url: str) -> str:
    upgrade(db_url)
    records = []
    for i in range(20):  # "slow": latencies 100 … 2000 ms, nearest-rank p95 = 1900
        r = make_record(i, days_ago=2 * MINUTE, cost="0.01", latency_ms=100.0 * (i + 1), deployment="slow")
        records.append(r)
    for i in range(20, 30):  # "flaky": 10 calls, one 500, one 429, one 401 → error rate 0.3
        r = make_record(i, days_ago=2 * MINUTE, cost="0.01", latency_ms=50.0, deployment="flaky")
        records.append(r)
    records[20].status_code, records[20].error_type = 500, "api_error"
    records[21].status_code, records[21].error_type = 429, "rate_limit_error"
    records[22].status_code, records[22].error_type = 401, "authentication_error"
    records.append(make_record(99, days_ago=3 / 24, cost="5", latency_ms=99999.0, deployment="slow"))  # outside
    LedgerStore(get_engine(db_url)).insert(records)
    return db_url


def fired(url: str, kind: str, threshold: str, window: int = 60) -> list:
    return evaluate(get_engine(url), [make_rule({"kind": kind, "threshold": threshold}, "t")], window).firing


@pytest.mark.parametrize(("kind", "at", "below", "deployment"), [
    ("latency_p95", "1900", "1899.9", "slow"),
    ("error_rate", "0.3", "0.29", "flaky"),
    ("server_error_rate", "0.1", "0.09", "flaky"),
    ("rate_limit_rate", "0.1", "0.09", "flaky"),
    ("auth_error_rate", "0.1", "0.09", "flaky"),
])
def test_rules_fire_above_and_stay_quiet_at_threshold(ledger, kind, at, below, deployment):
    assert fired(ledger, kind, at) == []
    (f,) = fired(ledger, kind, below)
    assert f.deployment == deployment and f.kind == kind


def test_cost_per_hour(ledger):
    # 30 calls × $0.01 in the last 60 minutes = $0.30/h; the $5 call three hours ago is outside the window
    assert fired(ledger, "cost_per_hour", "0.30") == []
    (f,) = fired(ledger, "cost_per_hour", "0.29")
    assert Decimal(f.detail["cost_usd"]) == Decimal("0.30")
    # a 30-minute window: the same $0.30 is $0.60/h
    assert fired(ledger, "cost_per_hour", "0.59", window=30)


def test_window_excludes_old_rows(ledger):
    assert fired(ledger, "latency_p95", "5000") == []  # the 99 999 ms call is 3 h old


def test_cli_exit_codes_and_json(ledger):
    quiet = cli("alerts", "check", "--db", ledger, "--window", "60", "--p95-ms", "1900", "--error-rate", "0.3")
    assert quiet.returncode == 0 and "quiet" in quiet.stdout
    loud = cli("alerts", "check", "--db", ledger, "--window", "60", "--p95-ms", "1000", "--format", "json")
    assert loud.returncode == 1
    data = json.loads(loud.stdout)
    assert [f["deployment"] for f in data["firing"]] == ["slow"] and data["firing"][0]["value"] == 1900


def test_webhook_receives_firing_rules(ledger, tmp_path):
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rules = tmp_path / "rules.toml"
        rules.write_text(f'window_minutes = 60\nwebhook = "http://127.0.0.1:{server.server_address[1]}/hook"\n'
                         '[[rule]]\nkind = "error_rate"\nthreshold = 0.25\nname = "flaky deployments"\n'
                         '[[rule]]\nkind = "latency_p95"\nthreshold = 60000\n')
        out = cli("alerts", "check", "--db", ledger, "--rules", str(rules))
        assert out.returncode == 1 and "flaky deployments" in out.stdout
        assert len(received) == 1
        (f,) = received[0]["firing"]
        assert f["rule"] == "flaky deployments" and f["deployment"] == "flaky" and received[0]["window_minutes"] == 60
        quiet = cli("alerts", "check", "--db", ledger, "--rules", str(rules), "--window", "1")
        assert quiet.returncode == 0 and len(received) == 1  # nothing fires, nothing posted
    finally:
        server.shutdown()


def test_unreachable_webhook_still_exits_1(ledger):
    out = cli("alerts", "check", "--db", ledger, "--window", "60", "--error-rate", "0.1",
              "--webhook", "http://127.0.0.1:9/hook")
    assert out.returncode == 1 and "webhook" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("[[rule]\n", "not valid TOML"),
    ("x = 1\n", "at least one"),
    ('[[rule]]\nkind = "p99"\nthreshold = 1\n', "kind must be one of"),
    ('[[rule]]\nkind = "error_rate"\n', "threshold is required"),
    ('[[rule]]\nkind = "error_rate"\nthreshold = "lots"\n', "not a number"),
    ('[[rule]]\nkind = "error_rate"\nthreshold = 2\n', "fraction"),
    ('[[rule]]\nkind = "error_rate"\nthreshold = 0.1\ncolour = "red"\n', "unknown key"),
])
def test_bad_rule_files(tmp_path, content, message, sqlite_url):
    path = tmp_path / "rules.toml"
    path.write_text(content)
    with pytest.raises(RuleError, match=message) as info:
        load_rules(path)
    assert "\n" not in str(info.value)
    upgrade(sqlite_url)
    out = cli("alerts", "check", "--db", sqlite_url, "--rules", str(path))
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:")
