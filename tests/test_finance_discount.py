"""Discounts, billed cost and CCUs: exact to 1e-10 USD, from the environment through the real SDK to the
hourly totals that reconciliation and budgets read."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from telemetry.finance import CCU_USD, Discounts, billed_cost, ccus, load_discounts
from telemetry.ledger.db import get_engine, upgrade
from telemetry.ledger.models import UsageHourlyRow, UsageRecordRow
from telemetry.ledger.spool import record_from_json, record_to_json
from telemetry.ledger.store import LedgerStore
from telemetry.settings import Settings, SettingsError

from .conftest import MSG, rows
from .helpers import make_record


@pytest.mark.parametrize(("list_cost", "discount", "billed"), [
    ("0.0123456789", "0.12", "0.0108641974"),      # 0.010864197432 → half-even to 1e-10
    ("0.0000000001", "0.12", "0.0000000001"),      # 0.000000000088 rounds up to one unit
    ("0.0000000005", "0.5", "0.0000000002"),       # 0.00000000025: half-even goes down
    ("0.0000000015", "0.5", "0.0000000008"),       # 0.00000000075: half-even goes up
    ("12.3400000000", "0", "12.3400000000"),
    ("1", "0.9999999999", "0.0000000001"),
])
def test_billed_cost_is_exact_to_1e10(list_cost, discount, billed):
    result = billed_cost(Decimal(list_cost), Decimal(discount))
    assert result == Decimal(billed) and result.as_tuple().exponent == -10
    assert ccus(result) == Decimal(billed) / Decimal("0.01") == Decimal(billed) * 100
    assert billed_cost(None, Decimal(discount)) is None  # unknown price stays unknown


def test_ccu_is_one_cent_and_discount_means_fewer_ccus():
    assert Decimal("0.01") == CCU_USD
    assert ccus(billed_cost(Decimal("10"), Decimal("0.12"))) == Decimal("880")
    assert format(ccus(Decimal("0.0000000001")), "f") == "0.00000001"  # plain notation, never 1E-8


@pytest.mark.parametrize("value", ["1", "1.0", "-0.01", "abc", "nan", "inf", "12%"])
def test_discount_env_rejects_bad_values_in_one_line(value):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"FOUNDRY_TELEMETRY_DISCOUNT": value})
    assert "FOUNDRY_TELEMETRY_DISCOUNT" in str(info.value) and "\n" not in str(info.value)


def test_discount_env_and_kwargs():
    assert Settings.from_env({}).discount == 0
    assert Settings.from_env({"FOUNDRY_TELEMETRY_DISCOUNT": "0.12"}).discount == Decimal("0.12")
    assert Settings.from_env({"FOUNDRY_TELEMETRY_DISCOUNT": "0.9999"}).discount == Decimal("0.9999")
    assert Settings.from_env({}, discount=0.15).discount == Decimal("0.15")
    with pytest.raises(SettingsError):
        Settings.from_env({}, discount=1)


def test_per_resource_discount_from_price_file(tmp_path):
    prices = tmp_path / "p.toml"
    prices.write_text('[discounts]\n"Contoso-East" = "0.2"\n')
    d = load_discounts(prices, Decimal("0.12"))
    assert d.for_resource("contoso-east") == Decimal("0.2") and d.for_resource("other") == Decimal("0.12")
    assert d.billed(Decimal("1"), "CONTOSO-EAST") == Decimal("0.8")
    prices.write_text('[discounts]\n"x" = "1.5"\n')
    with pytest.raises(SettingsError, match="discounts.x"):
        load_discounts(prices)


def test_spool_round_trip_keeps_billed_cost_exact():
    r = make_record(1, billed_cost_usd=Decimal("0.0108241974"))
    back = record_from_json(record_to_json(r))
    assert back.billed_cost_usd == Decimal("0.0108241974") and isinstance(back.billed_cost_usd, Decimal)


def test_hourly_totals_equal_the_rows_and_replays_count_once(db_url):
    upgrade(db_url)
    engine = get_engine(db_url)
    base = dt.datetime(2026, 11, 3, 10, 0, tzinfo=dt.UTC)
    discounts = Discounts(Decimal("0.12"), {"contoso-west": Decimal("0.25")})
    records = []
    for i in range(40):
        r = make_record(i, cost=f"0.{i + 1:010d}", resource=["contoso-east", "Contoso-West"][i % 2],
                        team=["search", "support"][i % 3 % 2])
        r.created_at = base + dt.timedelta(minutes=17 * i)
        r.billed_cost_usd = discounts.billed(r.cost_usd, r.resource)
        records.append(r)
    records.append(make_record(99, cost=None, resource="contoso-east"))  # unpriced: counted, never costed
    store = LedgerStore(engine)
    assert store.insert(records) == 41
    assert store.insert(records[:10]) == 0  # a replay adds nothing
    t = UsageHourlyRow.__table__
    with engine.connect() as conn:
        got = conn.execute(select(func.sum(t.c.requests), func.sum(t.c.cost_e10), func.sum(t.c.billed_e10),
                                  func.sum(t.c.unpriced))).one()
        per_hour = conn.execute(select(t.c.hour, func.sum(t.c.billed_e10)).group_by(t.c.hour)).all()
        stored = conn.scalars(select(UsageRecordRow.billed_cost_usd).where(UsageRecordRow.id == records[1].record_id)
                              ).one()
    priced = records[:40]
    assert got[0] == 41 and got[3] == 1
    assert got[1] == sum(int(r.cost_usd.scaleb(10)) for r in priced)
    assert got[2] == sum(int(r.billed_cost_usd.scaleb(10)) for r in priced)
    assert stored == records[1].billed_cost_usd == (records[1].cost_usd * Decimal("0.75")).quantize(Decimal("1e-10"))
    expected: dict[dt.datetime, int] = {records[40].created_at.replace(minute=0, second=0, microsecond=0): 0}
    for r in priced:
        h = r.created_at.replace(minute=0)
        expected[h] = expected.get(h, 0) + int(r.billed_cost_usd.scaleb(10))
    assert {h.astimezone(dt.UTC): v for h, v in per_hour} == expected


@pytest.mark.parametrize(("per_resource", "factor"), [(None, "0.88"), ("0.25", "0.75")])
def test_discount_through_the_real_sdk(make_tel, emulator, otel, sqlite_url, tmp_path, per_resource, factor):
    from anthropic import AnthropicFoundry

    from .conftest import sdk_kwargs

    prices = None
    if per_resource:  # the emulator's resource, as named from its host
        prices = tmp_path / "prices.toml"
        prices.write_text(f'[discounts]\n"127.0.0.1" = "{per_resource}"\n')
    tel = make_tel(discount="0.12", prices_path=str(prices) if prices else None)
    client = tel.instrument(AnthropicFoundry(**sdk_kwargs(emulator, otel)))
    for _ in range(3):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=MSG)
    assert tel.flush()
    got = rows(sqlite_url)
    assert len(got) == 3 and all(r.cost_usd and r.cost_usd > 0 for r in got)
    for r in got:
        assert r.resource == "127.0.0.1"
        assert r.billed_cost_usd == (r.cost_usd * Decimal(factor)).quantize(Decimal("1e-10"))
    t = UsageHourlyRow.__table__
    with get_engine(sqlite_url).connect() as conn:
        billed, listed, resource = conn.execute(
            select(func.sum(t.c.billed_e10), func.sum(t.c.cost_e10), func.max(t.c.resource))).one()
    assert billed == sum(int(r.billed_cost_usd.scaleb(10)) for r in got)
    assert listed == sum(int(r.cost_usd.scaleb(10)) for r in got)
    assert resource == got[0].resource.lower()


def test_migration_backfills_hourly_totals_from_the_rows_kept(db_url):
    """A ledger written before revision 0004 (at 0003): its rows become exact hourly totals (billed at list)."""
    import sqlalchemy as sa

    from telemetry.ledger.db import ensure_partitions

    upgrade(db_url, "0003")
    engine = get_engine(db_url)
    base = dt.datetime(2026, 11, 3, 10, 0, tzinfo=dt.UTC)
    if engine.dialect.name == "postgresql":
        ensure_partitions(engine, {base.date(), (base + dt.timedelta(hours=30)).date()}, set())
    costs = [f"0.{i * 7919:010d}" for i in range(30)] + [None]
    old = UsageRecordRow.__table__  # every column but the new billed_cost_usd and discount, as before 0004
    columns = [c for c in old.columns if c.name not in ("billed_cost_usd", "discount")]
    rows = [{c.name: None for c in columns} | {
        "id": f"{i:032x}", "created_at": base + dt.timedelta(minutes=61 * i), "operation_id": f"op{i}", "attempt": 0,
        "operation": "chat", "stream": False, "input_tokens": 5, "output_tokens": 7, "cache_creation_input_tokens": 0,
        "cache_creation_5m_input_tokens": 0, "cache_creation_1h_input_tokens": 0, "cache_read_input_tokens": 0,
        "web_search_requests": 0, "cost_usd": cost, "resource": ["Contoso-East", "contoso-west"][i % 2],
        "team": "search", "tags": {}} for i, cost in enumerate(costs)]
    with engine.begin() as conn:
        conn.execute(sa.insert(sa.table("usage_records", *(sa.column(c.name, c.type) for c in columns))), rows)
    upgrade(db_url)
    t = UsageHourlyRow.__table__
    with engine.connect() as conn:
        got = conn.execute(select(func.sum(t.c.requests), func.sum(t.c.cost_e10), func.sum(t.c.billed_e10),
                                  func.sum(t.c.unpriced), func.count(), func.sum(t.c.output_tokens))).one()
        resources = set(conn.scalars(select(t.c.resource).distinct()))
    listed = sum(int(Decimal(c).scaleb(10)) for c in costs if c)
    assert tuple(got) == (31, listed, listed, 1, 31, 31 * 7)  # 61-minute steps: one hour each
    assert resources == {"contoso-east", "contoso-west"}


def test_reprice_moves_billed_cost_and_hourly_totals_exactly(db_url):
    """A re-price keeps each row's own discount, and usage_hourly moves with the rows (same transaction)."""
    from telemetry.pricing import load_price_table
    from telemetry.pricing.reprice import reprice

    upgrade(db_url)
    engine = get_engine(db_url)
    base = dt.datetime(2026, 11, 3, 10, 0, tzinfo=dt.UTC)
    records = []
    for i in range(24):
        r = make_record(i, cost="0.5", resource=["contoso-east", "contoso-west"][i % 2])  # a wrong price
        r.created_at = base + dt.timedelta(minutes=37 * i)
        r.discount = [Decimal("0.12"), Decimal("0.3"), None][i % 3]  # None: written before discounts existed
        r.billed_cost_usd = billed_cost(r.cost_usd, r.discount) if r.discount is not None else None
        records.append(r)
    LedgerStore(engine).insert(records)
    result = reprice(engine, load_price_table(), base.date(), base.date() + dt.timedelta(days=1))
    assert result.changed == 24
    t, rows_t = UsageHourlyRow.__table__, UsageRecordRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(rows_t.c.cost_usd, rows_t.c.billed_cost_usd, rows_t.c.discount)).all()
        hourly = conn.execute(select(func.sum(t.c.cost_e10), func.sum(t.c.billed_e10), func.sum(t.c.requests))).one()
    for cost, billed, discount in rows:
        assert cost != Decimal("0.5")
        assert billed == (None if discount is None else billed_cost(cost, discount))
    assert hourly[0] == sum(int(c.scaleb(10)) for c, _, _ in rows)
    assert hourly[1] == sum(int((c if b is None else b).scaleb(10)) for c, b, _ in rows)
    assert hourly[2] == 24
    again = reprice(engine, load_price_table(), base.date(), base.date() + dt.timedelta(days=1))
    assert again.changed == 0  # idempotent
