"""Hand-computed costs for every model in the built-in table and every token kind."""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import pytest

from telemetry.pricing import PriceError, load_price_table
from telemetry.record import UsageRecord

# (model, base input, 5m write, 1h write, cache read, output) in USD per million tokens, from the pricing pages
EXPECTED = [
    ("claude-opus-5-5", "4", "5", "8", "0.20", "20"),
    ("claude-opus-5", "5", "6.25", "10", "0.50", "25"),
    ("claude-sonnet-5-5", "2", "2.50", "4", "0.20", "10"),
    ("claude-sonnet-5", "2", "2.50", "4", "0.20", "10"),
    ("claude-opus-4-7", "5", "6.25", "10", "0.50", "25"),
    ("claude-opus-4-6", "5", "6.25", "10", "0.50", "25"),
    ("claude-sonnet-4-6", "3", "3.75", "6", "0.30", "15"),
    ("claude-opus-4-5", "5", "6.25", "10", "0.50", "25"),
    ("claude-opus-4-1", "15", "18.75", "30", "1.50", "75"),
    ("claude-opus-4", "15", "18.75", "30", "1.50", "75"),
    ("claude-sonnet-4-5", "3", "3.75", "6", "0.30", "15"),
    ("claude-sonnet-4", "3", "3.75", "6", "0.30", "15"),
    ("claude-3-7-sonnet", "3", "3.75", "6", "0.30", "15"),
    ("claude-haiku-4-5", "1", "1.25", "2", "0.10", "5"),
    ("claude-3-5-haiku", "0.80", "1", "1.60", "0.08", "4"),
    ("claude-3-haiku", "0.25", "0.30", "0.50", "0.03", "1.25"),
]


def rec(model: str, deployment: str | None = None, **tokens: int) -> UsageRecord:
    r = UsageRecord(created_at=dt.datetime.now(dt.UTC), operation_id="o", attempt=0,
                    deployment=deployment or model, model=model)
    for k, v in tokens.items():
        setattr(r, k, v)
    return r


@pytest.fixture(scope="module")
def table():
    return load_price_table()


def test_every_model_in_table_is_covered(table):
    assert set(table.models) == {m for m, *_ in EXPECTED}


@pytest.mark.parametrize(("model", "inp", "w5", "w1h", "read", "out"), EXPECTED)
def test_each_token_kind(table, model, inp, w5, w1h, read, out):
    m = Decimal(1_000_000)
    assert table.cost(rec(model, input_tokens=1000)) == Decimal(inp) * 1000 / m
    assert table.cost(rec(model, output_tokens=1000)) == Decimal(out) * 1000 / m
    assert table.cost(rec(model, cache_read_input_tokens=1000)) == Decimal(read) * 1000 / m
    five = rec(model, cache_creation_input_tokens=1000, cache_creation_5m_input_tokens=1000)
    assert table.cost(five) == Decimal(w5) * 1000 / m
    hour = rec(model, cache_creation_input_tokens=1000, cache_creation_1h_input_tokens=1000)
    assert table.cost(hour) == Decimal(w1h) * 1000 / m
    # no breakdown: the whole write at the 5-minute rate
    assert table.cost(rec(model, cache_creation_input_tokens=1000)) == Decimal(w5) * 1000 / m
    mixed = rec(model, input_tokens=7, output_tokens=11, cache_read_input_tokens=13,
                cache_creation_input_tokens=5, cache_creation_5m_input_tokens=2, cache_creation_1h_input_tokens=3)
    expected = (7 * Decimal(inp) + 11 * Decimal(out) + 13 * Decimal(read) + 2 * Decimal(w5) + 3 * Decimal(w1h)) / m
    assert table.cost(mixed) == expected.quantize(Decimal("1e-10"))


def test_dated_model_ids_resolve_to_family(table):
    assert table.cost(rec("claude-sonnet-4-5-20250929", output_tokens=1_000_000)) == Decimal(15)
    assert table.cost(rec("claude-3-5-haiku-20241022", output_tokens=1_000_000)) == Decimal(4)
    assert table.cost(rec("claude-opus-4-0", output_tokens=1_000_000)) == Decimal(75)


def test_long_context_tier(table):
    # 150k uncached + 40k cache read + 20k (1h) write = 210k > 200k: every kind at the long-context rate
    r = rec("claude-sonnet-4-5", input_tokens=150_000, cache_read_input_tokens=40_000,
            cache_creation_input_tokens=20_000, cache_creation_1h_input_tokens=20_000, output_tokens=1_000)
    expected = (150_000 * Decimal(6) + 40_000 * Decimal("0.60") + 20_000 * Decimal(12) + 1_000 * Decimal("22.50"))
    assert table.cost(r) == expected / 1_000_000
    at_limit = rec("claude-sonnet-4", input_tokens=200_000, output_tokens=1_000)
    assert table.cost(at_limit) == (200_000 * Decimal(3) + 1_000 * Decimal(15)) / 1_000_000
    no_tier = rec("claude-opus-4-5", input_tokens=300_000)
    assert table.cost(no_tier) == Decimal("1.5")


def test_deployment_map_multiplier_and_web_search():
    table = load_price_table(deployments="my-claude=claude-sonnet-4-5, usdz=claude-haiku-4-5*1.1")
    assert table.cost(rec(None, deployment="my-claude", output_tokens=1_000_000)) == Decimal(15)
    usdz = rec("claude-haiku-4-5-20251001", deployment="usdz", input_tokens=1_000_000, output_tokens=1_000_000,
               cache_read_input_tokens=1_000_000)
    assert usdz.model and table.cost(usdz) == (Decimal(1) + 5 + Decimal("0.10")) * Decimal("1.1")
    search = rec("claude-haiku-4-5", output_tokens=0, input_tokens=0, web_search_requests=3)
    assert table.cost(search) == Decimal("0.03")


def test_unknown_model_is_null_with_one_warning(table, caplog):
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        assert table.cost(rec("claude-experimental-9", input_tokens=10)) is None
        assert table.cost(rec("claude-experimental-9", input_tokens=10)) is None
    assert sum("claude-experimental-9" in r.getMessage() for r in caplog.records) == 1
    assert table.cost(rec("claude-experimental-9")) == 0  # a rejected attempt costs nothing


def test_price_file_overrides_and_extends(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models."claude-haiku-4-5"]\ninput = "2"\ncache_write_5m = "1"\ncache_write_1h = "2"\n'
                    'cache_read = "0.1"\noutput = "5"\nsource = "contract"\nchecked = "2026-11-01"\n'
                    '[models."claude-new"]\ninput = "1"\ncache_write_5m = "1"\ncache_write_1h = "1"\n'
                    'cache_read = "1"\noutput = "1"\n[deployments.eu]\nmodel = "claude-new"\nmultiplier = "2"\n')
    table = load_price_table(path)
    assert table.cost(rec("claude-haiku-4-5", input_tokens=1_000_000)) == 2
    assert table.cost(rec(None, deployment="eu", input_tokens=1_000_000)) == 2


@pytest.mark.parametrize(("content", "message"), [
    ("[models.x\n", "not valid TOML"),
    ('[models."x"]\ninput = "1"\n', "missing"),
    ('[models."x"]\ninput = "abc"\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\noutput = 1\n',
     "not a number"),
    ('[models."x"]\ninput = "-1"\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1\noutput = 1\n',
     "non-negative"),
])
def test_malformed_price_file_is_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(PriceError, match=message) as info:
        load_price_table(path)
    assert "\n" not in str(info.value)


def test_missing_price_file_and_bad_map(tmp_path):
    with pytest.raises(PriceError, match="does not exist"):
        load_price_table(tmp_path / "nope.toml")
    with pytest.raises(PriceError, match="name=model"):
        load_price_table(deployments="oops")
    with pytest.raises(PriceError, match="not a number"):
        load_price_table(deployments="a=claude-haiku-4-5*x")
