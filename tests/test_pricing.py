"""The held-in price matrix (rates typed in here from ../shared/DESIGN.md, not read from prices.toml):
every priced model × every token kind × tier boundaries × before/after a dated change × a 1.1× deployment,
exact to 1e-10. Plus the no-guess rules and the strict price file."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from decimal import Decimal

import pytest

from telemetry.pricing import PriceError, load_price_table
from telemetry.record import UsageRecord

D = Decimal
OPUS_5 = ("5", "6.25", "10", "0.50", "25")
OPUS_41 = ("15", "18.75", "30", "1.50", "75")
SONNET_4 = ("3", "3.75", "6", "0.30", "15")
SONNET_4_LONG = (200_000, ("6", "7.50", "12", "0.60", "22.50"))
FABLE_51 = ("10", "12.50", "20", "0.25", "50")
FABLE_5 = ("10", "12.50", "20", "1.00", "50")
# model: [(effective or None, (input, 5m write, 1h write, cache read, output))], tier (threshold, rates) or None
EXPECTED: dict[str, tuple[list[tuple[dt.date | None, tuple[str, ...]]], tuple[int, tuple[str, ...]] | None]] = {
    "claude-opus-5-5": ([(None, ("4", "5", "8", "0.20", "20"))], None),
    "claude-opus-5-5-fast": ([(None, ("8", "10", "16", "0.40", "40"))], None),
    "claude-opus-5": ([(None, OPUS_5)], None),
    "claude-opus-4-8": ([(None, OPUS_5)], None),
    "claude-opus-4-7": ([(None, OPUS_5)], None),
    "claude-opus-4-6": ([(None, OPUS_5)], None),
    "claude-opus-4-5": ([(None, OPUS_5)], None),
    "claude-opus-4-1": ([(None, OPUS_41)], None),
    "claude-opus-4": ([(None, OPUS_41)], None),
    "claude-sonnet-5-5": ([(None, ("2", "2.50", "4", "0.20", "10")),
                           (dt.date(2026, 10, 7), ("2", "2.50", "4", "0.10", "10"))], None),
    "claude-sonnet-5": ([(None, ("2", "2.50", "4", "0.20", "10"))], None),
    "claude-sonnet-4-6": ([(None, SONNET_4)], None),
    "claude-sonnet-4-5": ([(None, SONNET_4)], SONNET_4_LONG),
    "claude-sonnet-4": ([(None, SONNET_4)], SONNET_4_LONG),
    "claude-3-7-sonnet": ([(None, SONNET_4)], None),
    "claude-haiku-5-5": ([(None, ("0.10", "0.125", "0.20", "0.01", "0.50"))],
                         (100_000, ("0.50", "0.625", "1.00", "0.05", "2.50"))),
    "claude-haiku-4-5": ([(None, ("1", "1.25", "2", "0.10", "5"))], None),
    "claude-3-5-haiku": ([(None, ("0.80", "1", "1.60", "0.08", "4"))], None),
    "claude-3-haiku": ([(None, ("0.25", "0.30", "0.50", "0.03", "1.25"))], None),
    "claude-fable-5-1": ([(None, FABLE_51)], None),
    "claude-mythos-5-1": ([(None, FABLE_51)], None),
    "claude-fable-5": ([(None, FABLE_5)], None),
    "claude-mythos-5": ([(None, FABLE_5)], None),
    "claude-mythos-preview": ([(None, FABLE_5)], None),
}
RETIREMENT = {"claude-haiku-4-5": dt.date(2026, 11, 15), "claude-opus-4-5": dt.date(2026, 11, 24),
              "claude-sonnet-4-5": dt.date(2026, 11, 30)}
KINDS = ("input", "write_5m", "write_1h", "write_no_breakdown", "cache_read", "output")
COUNTS = (1, 99_999, 100_000, 100_001, 199_999, 200_000, 200_001)
TOLERANCE = D("1e-10")


def rec(model: str | None, deployment: str | None = None, when: dt.datetime | None = None, **tokens: int
        ) -> UsageRecord:
    r = UsageRecord(created_at=when or dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC), operation_id="o", attempt=0,
                    deployment=deployment or model, model=model)
    for k, v in tokens.items():
        setattr(r, k, v)
    return r


def tokens_of(kind: str, n: int) -> dict[str, int]:
    return {"input": {"input_tokens": n},
            "write_5m": {"cache_creation_input_tokens": n, "cache_creation_5m_input_tokens": n},
            "write_1h": {"cache_creation_input_tokens": n, "cache_creation_1h_input_tokens": n},
            "write_no_breakdown": {"cache_creation_input_tokens": n},
            "cache_read": {"cache_read_input_tokens": n},
            # output with a prompt of the same size, so that the tier is exercised for output too
            "output": {"output_tokens": n, "input_tokens": n}}[kind]


def expected_cost(model: str, when: dt.datetime, kind: str, n: int, multiplier: Decimal) -> Decimal:
    periods, tier = EXPECTED[model]
    rates = periods[0][1]
    for effective, r in periods:
        if effective is None or when >= dt.datetime.combine(effective, dt.time(), dt.UTC):
            rates = r
    inp, w5, w1h, read, out = (D(x) for x in rates)
    if tier is not None and n > tier[0]:  # every kind here is n prompt tokens (output: n input + n output)
        inp, w5, w1h, read, out = (D(x) for x in tier[1])
    per_million = {"input": n * inp, "write_5m": n * w5, "write_1h": n * w1h, "write_no_breakdown": n * w5,
                   "cache_read": n * read, "output": n * out + n * inp}[kind]
    return per_million / 1_000_000 * multiplier


def dates_for(model: str) -> list[dt.datetime]:
    periods, _ = EXPECTED[model]
    out = [dt.datetime(2026, 1, 2, 3, tzinfo=dt.UTC)]
    for effective, _rates in periods:
        if effective is not None:
            start = dt.datetime.combine(effective, dt.time(), dt.UTC)
            out += [start - dt.timedelta(microseconds=1), start, start + dt.timedelta(days=30)]
    return out


@pytest.fixture(scope="module")
def table():
    return load_price_table(deployments="usdz=claude-haiku-4-5*1.1")


def test_every_priced_model_is_held_in(table):
    assert set(table.models) == set(EXPECTED)
    assert "claude-fable-5-2" not in table.models  # unverified: stays NULL until a first-party source says


def test_every_rate_has_source_checked_and_effective_order(table):
    for name, model in table.models.items():
        assert [p.effective for p in model.periods] == [e for e, _ in EXPECTED[name][0]], name
        for period in model.periods:
            assert period.source.startswith(("https://", "LiteLLM")), name
            assert dt.date.fromisoformat(period.checked) == dt.date(2026, 12, 1), name
        assert model.retirement == RETIREMENT.get(name, model.retirement), name


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_price_matrix(table, model):
    tier = EXPECTED[model][1]
    checked = 0
    for when in dates_for(model):
        for kind in KINDS:
            for n in COUNTS:
                for deployment, multiplier in ((model, D(1)), ("usdz", D("1.1"))):
                    r = rec(model, deployment=deployment, when=when, **tokens_of(kind, n))
                    got = table.cost(r)
                    want = expected_cost(model, when, kind, n, multiplier)
                    assert got is not None and abs(got - want) <= TOLERANCE, (model, when, kind, n, deployment,
                                                                              got, want)
                    assert got == want.quantize(TOLERANCE)
                    checked += 1
    assert checked >= len(KINDS) * len(COUNTS) * 2
    if tier:  # the boundary itself is the base rate, one token more is the tier for the whole request
        at = table.cost(rec(model, input_tokens=tier[0]))
        above = table.cost(rec(model, input_tokens=tier[0] + 1))
        assert at == tier[0] * D(EXPECTED[model][0][-1][1][0]) / 1_000_000
        assert above == (tier[0] + 1) * D(tier[1][0]) / 1_000_000


def test_haiku_5_5_tier_counts_the_whole_prompt(table):
    # 60k uncached + 30k read + 10,001 (1h) write = 100,001 prompt tokens: the whole request at the tier
    r = rec("claude-haiku-5-5", input_tokens=60_000, cache_read_input_tokens=30_000,
            cache_creation_input_tokens=10_001, cache_creation_1h_input_tokens=10_001, output_tokens=1_000)
    want = (60_000 * D("0.50") + 30_000 * D("0.05") + 10_001 * D("1.00") + 1_000 * D("2.50")) / 1_000_000
    assert table.cost(r) == want.quantize(TOLERANCE)
    r.cache_creation_input_tokens = r.cache_creation_1h_input_tokens = 10_000  # exactly 100,000: base rates
    want = (60_000 * D("0.10") + 30_000 * D("0.01") + 10_000 * D("0.20") + 1_000 * D("0.50")) / 1_000_000
    assert table.cost(r) == want.quantize(TOLERANCE)


def test_sonnet_5_5_cache_read_changes_at_midnight_utc(table):
    before = dt.datetime(2026, 10, 6, 23, 59, 59, 999_999, tzinfo=dt.UTC)
    after = dt.datetime(2026, 10, 7, tzinfo=dt.UTC)
    assert table.cost(rec("claude-sonnet-5-5", when=before, cache_read_input_tokens=1_000_000)) == D("0.20")
    assert table.cost(rec("claude-sonnet-5-5", when=after, cache_read_input_tokens=1_000_000)) == D("0.10")
    local = dt.datetime(2026, 10, 7, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # 2026-10-06 23:00 UTC
    assert table.cost(rec("claude-sonnet-5-5", when=local, cache_read_input_tokens=1_000_000)) == D("0.20")


def test_dated_ids_aliases_and_fast_opus(table):
    assert table.cost(rec("claude-sonnet-4-5-20250929", output_tokens=1_000_000)) == 15
    assert table.cost(rec("claude-3-5-haiku-latest", output_tokens=1_000_000)) == 4
    assert table.cost(rec("claude-3-7-sonnet-latest", output_tokens=1_000_000)) == 15
    assert table.cost(rec("claude-opus-4-0", output_tokens=1_000_000)) == 75
    assert table.cost(rec("claude-opus-5-5-fast", output_tokens=1_000_000)) == 40
    assert table.cost(rec("claude-opus-5-5-20260901", output_tokens=1_000_000)) == 20


def test_count_tokens_is_free(table):
    r = rec("claude-opus-4-1", input_tokens=100_004)
    r.operation = "count_tokens"
    cost = table.cost(r)
    assert cost == 0 and cost is not None and str(cost) == "0E-10"  # a Decimal zero, printed plain elsewhere
    r.model = None  # count_tokens responses name no model: still free, no warning
    assert table.cost(r) == 0


def test_answered_model_decides_and_the_map_never_overrides_it():
    table = load_price_table(deployments="claude-haiku-4-5=claude-haiku-4-5,my-claude=claude-sonnet-4-5*1.1")
    # a deployment named like an old model that answers a new one: priced as what answered
    r = rec("claude-haiku-5-5", deployment="claude-haiku-4-5", input_tokens=50_000)
    assert table.cost(r) == D("0.005")  # not 0.05 at Haiku 4.5's rate
    # the map stands in only when the response names no model (the multiplier always applies)
    assert table.cost(rec(None, deployment="my-claude", output_tokens=1_000_000)) == D("16.5")
    assert table.cost(rec("claude-haiku-5-5", deployment="my-claude", output_tokens=10_000)) == D("0.0055")


def test_unknown_answered_model_behind_known_deployment_is_null_with_one_warning(caplog):
    table = load_price_table(deployments="claude-haiku-4-5=claude-haiku-4-5")
    unknown = f"claude-haiku-9-{uuid.uuid4().hex[:6]}"
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        for _ in range(3):
            assert table.cost(rec(unknown, deployment="claude-haiku-4-5", input_tokens=10)) is None
        other = load_price_table()  # per process, not per table
        assert other.cost(rec(unknown, input_tokens=10)) is None
    assert sum(unknown in r.getMessage() for r in caplog.records) == 1
    assert table.cost(rec(unknown)) == 0  # a rejected attempt costs nothing
    # no model answered and no mapping: NULL, never the deployment name taken as a model
    assert table.cost(rec(None, deployment="claude-opus-4-5", input_tokens=10)) is None


def test_web_search(table):
    assert table.cost(rec("claude-haiku-4-5", web_search_requests=3)) == D("0.03")


def test_price_file_overrides_extends_and_dates(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text('[models."claude-haiku-4-5"]\ninput = "2"\ncache_write_5m = "1"\ncache_write_1h = "2"\n'
                    'cache_read = "0.1"\noutput = "5"\nsource = "contract"\nchecked = "2026-11-01"\n'
                    '[models."claude-new"]\naliases = ["claude-new-latest"]\nsource = "contract"\n'
                    '[[models."claude-new".rates]]\ninput = "1"\ncache_write_5m = "1"\ncache_write_1h = "1"\n'
                    'cache_read = "1"\noutput = "1"\n'
                    '[[models."claude-new".rates]]\neffective = 2026-11-15\ninput = "0.5"\ncache_write_5m = "1"\n'
                    'cache_write_1h = "1"\ncache_read = "1"\noutput = "1"\n'
                    '[deployments.eu]\nmodel = "claude-new"\nmultiplier = "2"\n')
    table = load_price_table(path)
    assert table.cost(rec("claude-haiku-4-5", input_tokens=1_000_000)) == 2
    assert table.cost(rec(None, deployment="eu", input_tokens=1_000_000)) == 2
    late = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    assert table.cost(rec("claude-new-latest", when=late, input_tokens=1_000_000)) == D("0.5")


RATES = 'input = "1"\ncache_write_5m = "1"\ncache_write_1h = "1"\ncache_read = "1"\noutput = "1"\n'


@pytest.mark.parametrize(("content", "needles"), [
    ("[models.x\n", ["not valid TOML"]),
    ('[model."claude-x"]\n' + RATES, ["unknown table [model]", "did you mean 'models'"]),
    ('[models."claude-x"]\n' + RATES + 'cache_raed = "1"\n', ["model 'claude-x'", "'cache_raed'", "cache_read"]),
    ('[models."claude-x"]\n' + RATES + "threshold = 100000\n", ["model 'claude-x'", "'threshold'"]),
    ('[models."claude-x"]\n' + RATES + 'aliases = "claude-x-latest"\n', ["model 'claude-x'", "'aliases'", "list"]),
    ('[models."claude-x"]\n' + RATES.replace('input = "1"', "input = true"), ["model 'claude-x'", "'input'"]),
    ('[models."claude-x"]\n' + RATES + "checked = 5\n", ["model 'claude-x'", "'checked'", "date"]),
    ('[models."claude-x"]\n' + RATES.replace('"1"\n', '"-1"\n', 1), ["model 'claude-x'", "non-negative"]),
    ('[models."claude-x"]\ninput = "1"\n', ["model 'claude-x'", "missing"]),
    ('[models."claude-x"]\n' + RATES + '[models."claude-x".long_context]\nthreshold = "lots"\n' + RATES,
     ["model 'claude-x'", "'threshold'"]),
    ('[[models."claude-x".rates]]\neffective = 2026-10-07\n' + RATES
     + '[[models."claude-x".rates]]\neffective = "2026-10-07"\n' + RATES,
     ["model 'claude-x'", "'effective'", "overlapping", "2026-10-07"]),
    ('[[models."claude-x".rates]]\n' + RATES + '[[models."claude-x".rates]]\n' + RATES,
     ["model 'claude-x'", "'effective'", "overlapping"]),
    ('[models."claude-x"]\n' + RATES + '[[models."claude-x".rates]]\n' + RATES, ["model 'claude-x'", "not both"]),
    ('[[models."claude-x".rates]]\neffective = "soon"\n' + RATES, ["model 'claude-x'", "'effective'"]),
    ('[deployments.eu]\nmodel = "claude-x"\nmultiplyer = "1.1"\n', ["deployment 'eu'", "'multiplyer'"]),
    ('[meta]\nweb_search = "10"\n', ["[meta]", "'web_search'"]),
])
def test_strict_price_file_one_line_error(tmp_path, content, needles):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(PriceError) as info:
        load_price_table(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_price_file_and_bad_map(tmp_path):
    with pytest.raises(PriceError, match="does not exist"):
        load_price_table(tmp_path / "nope.toml")
    with pytest.raises(PriceError, match="name=model"):
        load_price_table(deployments="oops")
    with pytest.raises(PriceError, match="not a number"):
        load_price_table(deployments="a=claude-haiku-4-5*x")


def test_mixed_token_kinds_sum_every_term_exactly():
    """Terms without tokens are skipped when pricing: every mix of present and absent kinds (and a web search,
    and a multiplier or none) gives the full five-term sum, exact, with the same exponent."""
    import itertools
    import random

    table = load_price_table(deployments="usdz=claude-sonnet-4-5*1.1")
    rng = random.Random(11)
    for present in itertools.product((0, 1), repeat=6):
        for deployment, multiplier in (("claude-sonnet-4-5", D(1)), ("usdz", D("1.1"))):
            n = [rng.randrange(1, 300_000) * p for p in present]
            record = UsageRecord(created_at=dt.datetime(2026, 6, 1, tzinfo=dt.UTC), operation_id="op", attempt=0,
                                 deployment=deployment, model="claude-sonnet-4-5-20250929", input_tokens=n[0],
                                 output_tokens=n[1], cache_read_input_tokens=n[2],
                                 cache_creation_input_tokens=n[3] + n[4], cache_creation_5m_input_tokens=n[3],
                                 cache_creation_1h_input_tokens=n[4], web_search_requests=n[5] % 50)
            if not any(n[:5]) and not n[5] % 50:
                assert table.cost(record) == 0
                continue
            period = table.price_of(record).period_at(record.created_at)
            rates = period.rates
            if period.tier is not None and n[0] + n[3] + n[4] + n[2] > period.tier.threshold:
                rates = period.tier.rates
            want = ((n[0] * rates.input + n[3] * rates.cache_write_5m + n[4] * rates.cache_write_1h
                     + n[2] * rates.cache_read + n[1] * rates.output) / 1_000_000 * multiplier
                    + (n[5] % 50) * table.web_search_per_1000 / 1000).quantize(D("1e-10"))
            got = table.cost(record)
            assert got == want and got.as_tuple() == want.as_tuple(), (present, deployment)
