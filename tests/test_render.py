"""Readable at any width: at 60, 80 and 120 columns (and piped, which rich treats as 80) no number, id or
name in the chargeback table is cut or broken; lookup is a clean label/value view; counts are exact."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.store import LedgerStore
from telemetry.reports.chargeback import chargeback
from telemetry.reports.lookup import as_dict, find
from telemetry.reports.period import parse_period
from telemetry.reports.render import print_lookup, to_table

from .helpers import make_record

SCRIPT = str(Path(sys.executable).with_name("foundry-telemetry"))
TEAMS = ["platform-engineering-emea", "search", "support-tier-2"]
DEPLOYMENTS = ["claude-sonnet-5-5", "claude-haiku-5-5", "usdz-chat-production"]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('render') / 'ledger.db'}"
    upgrade(url)
    records = []
    for i in range(18):
        r = make_record(i, days_ago=i % 3, cost="123456.7891234567" if i == 0 else "0.0042")
        r.team = TEAMS[i % 3]
        r.project = ("query-rewrite-v2", "chat")[i % 2]
        r.deployment = DEPLOYMENTS[i % 3]
        r.model = "claude-sonnet-5-5-20261001" if i % 3 == 0 else "claude-haiku-5-5"
        r.input_tokens = 987_654_321_012 if i == 0 else 1_234 + i
        r.cache_read_input_tokens = 55_555_555 if i == 1 else 0
        r.tags = {"demo": "true"}
        if i == 5:
            r.status_code, r.error_type = 529, "overloaded_error"
            r.error_message = "Overloaded: the service is temporarily unable to take this request"
            r.model = None
            r.operation_id = "stainless-python-retry-61ddf767-4e87-4d06-acba-45314a0c92c7"
        records.append(r)
    for i in range(100, 115):  # a shared prefix of 15 ids, more than lookup shows
        records.append(make_record(i, days_ago=0.1, request_id=f"req_batch_{i}"))
    LedgerStore(get_engine(url)).insert(records)
    return url


def render(width: int, fn, *args) -> str:
    buf = io.StringIO()
    fn(*args, Console(file=buf, width=width, force_terminal=False, color_system=None))
    return buf.getvalue()


def tokens(text: str) -> set[str]:
    return set(text.split())


@pytest.mark.parametrize("width", [60, 80, 120])
@pytest.mark.parametrize("by", [["team"], ["deployment"], ["team", "project"], ["team", "project", "deployment"],
                                ["team", "project", "deployment", "model", "day"]], ids=",".join)
def test_chargeback_table_never_cuts_a_name_or_number(ledger, width, by):
    since, until = parse_period("7d", None)
    report = chargeback(get_engine(ledger), since, until, by)
    out = render(width, to_table, report)
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    assert "…" not in out and "TOTAL" in out
    seen = tokens(out)
    for row in report.rows:
        for key in by:
            assert row.keys[key] in seen, (key, row.keys[key], out)  # whole, not folded over two lines
        assert f"{row.requests:,}" in out
    total_cost = f"${report.total.cost_usd.quantize(Decimal('0.0001')):,}"
    assert total_cost in seen and f"{report.total.requests:,}" in seen, out
    if width == 120 and len(by) <= 2:
        assert "987,654" in out and "cache rd" in out  # every column when there is room
    if "left out" in out:
        assert "--format csv" in out


def test_narrowest_falls_back_to_lines_with_whole_values(ledger):
    since, until = parse_period("7d", None)
    report = chargeback(get_engine(ledger), since, until, ["team", "project", "deployment", "model", "day"])
    out = render(30, to_table, report)
    assert "…" not in out
    assert "platform-engineering-emea" in tokens(out) and "claude-sonnet-5-5-20261001" in tokens(out)


def test_piped_report_defaults_to_80_columns(ledger):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = subprocess.run([SCRIPT, "report", "--db", ledger, "--since", "7d", "--by", "team,project,deployment"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80 and "…" not in out.stdout
    assert "platform-engineering-emea" in tokens(out.stdout) and "usdz-chat-production" in tokens(out.stdout)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_lookup_is_a_clean_label_value_view(ledger, width):
    row = find(get_engine(ledger), "req_5")
    out = render(width, print_lookup, as_dict(row))
    assert "None" not in out and "{" not in out.replace('customDimensions["', "") and "'" not in out
    assert "stainless-python-retry-61ddf767-4e87-4d06-acba-45314a0c92c7" in tokens(out)  # the id, whole
    assert "Overloaded: the service is temporarily unable to take this request" in " ".join(out.split())
    assert re.search(r"^model\s+—$", out, re.M) and re.search(r"^tags\s+demo=true$", out, re.M)
    assert re.search(r"^status\s+529$", out, re.M) and "req_5" in tokens(out) and "apim-5" in tokens(out)
    for line in out.splitlines():  # only an unbreakable value may pass the width, and it is printed whole
        assert len(line) <= width or " " not in line.strip() or line.startswith(("|", "dependencies"))


def test_ambiguous_prefix_reports_the_exact_count(ledger):
    out = subprocess.run([SCRIPT, "lookup", "req_1", "--db", ledger], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0  # an exact id wins over being a prefix of others
    out = subprocess.run([SCRIPT, "lookup", "req_batch", "--db", ledger], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "matches 15 calls" in out.stderr, out.stderr
