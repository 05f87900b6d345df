"""One self-contained HTML file: inline SVG charts and the table. No scripts, no external URLs.
Every value from the ledger goes through `html.escape`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from html import escape
from typing import Any

from sqlalchemy import Engine

from ..finance.budget import Budget
from ..finance.view import BurnDown, burn_downs
from ..finance.view import summary as finance_summary
from ..numbers import money
from .chargeback import Report, daily_series
from .render import CSV_COLUMNS
from .stats import daily_deployment_stats

PALETTE = ("#3b6fd8", "#e07b39", "#3aa37a", "#c2477d", "#8a63d2", "#c9a227", "#4aa3c2", "#7f7f7f")
W, BAR_H, GAP, LEFT = 720, 22, 8, 170


def _exact(v: Decimal, prefix: str = "") -> str:
    """Every digit the ledger has (1e-10 USD), plain notation, trailing zeros dropped."""
    text = f"{v:,f}"
    return prefix + (text.rstrip("0").rstrip(".") if "." in text else text)


def _money(v: Decimal | float) -> str:
    return money(v)


def hbar_chart(chart_id: str, title: str, items: Sequence[tuple[str, float, str]], color: str = PALETTE[0]
               ) -> str:
    """Horizontal bars: (label, value, value text)."""
    if not items:
        return _empty(chart_id, title)
    top = max(v for _, v, _ in items) or 1.0
    h = len(items) * (BAR_H + GAP) + 10
    parts = []
    for i, (label, value, text) in enumerate(items):
        y = 5 + i * (BAR_H + GAP)
        w = max(1.0, (W - LEFT - 110) * value / top)
        parts.append(
            f'<text x="{LEFT - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
            f'<rect class="bar" x="{LEFT}" y="{y}" width="{w:.1f}" height="{BAR_H}" fill="{color}">'
            f"<title>{escape(label)}: {escape(text)}</title></rect>"
            f'<text x="{LEFT + w + 6:.1f}" y="{y + 15}">{escape(text)}</text>')
    return _figure(chart_id, title, h, "".join(parts))


def grouped_hbar_chart(chart_id: str, title: str, items: Sequence[tuple[str, list[float]]],
                       series: Sequence[str], unit: str, text: Callable[[float], str] | None = None) -> str:
    if not items:
        return _empty(chart_id, title)
    top = max((v for _, vals in items for v in vals), default=1.0) or 1.0
    n = len(series)
    row_h = n * (BAR_H // 1.5 + 2) + GAP
    h = int(len(items) * row_h + 30)
    parts = []
    text = text or (lambda v: f"{v:.1f} {unit}")
    for i, (label, vals) in enumerate(items):
        y0 = 5 + i * row_h
        parts.append(f'<text x="{LEFT - 8}" y="{y0 + 14}" text-anchor="end">{escape(label)}</text>')
        for j, v in enumerate(vals):
            y = y0 + j * (BAR_H // 1.5 + 2)
            w = max(1.0, (W - LEFT - 110) * v / top)
            parts.append(f'<rect class="bar" x="{LEFT}" y="{y}" width="{w:.1f}" height="{BAR_H // 1.5}" '
                         f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(series[j])}: {escape(text(v))}</title>'
                         f'</rect><text x="{LEFT + w + 6:.1f}" y="{y + 11}">{escape(text(v))}</text>')
    legend = "".join(f'<rect x="{LEFT + k * 90}" y="{h - 18}" width="12" height="12" '
                     f'fill="{PALETTE[k % len(PALETTE)]}"/><text x="{LEFT + k * 90 + 16}" y="{h - 8}">'
                     f"{escape(name)}</text>" for k, name in enumerate(series))
    return _figure(chart_id, title, h, "".join(parts) + legend)


def stacked_columns(chart_id: str, title: str, days: list[str], series: dict[str, dict[str, Decimal]]) -> str:
    if not days or not series:
        return _empty(chart_id, title)
    names = sorted(series, key=lambda k: -sum(series[k].values()))
    totals = [sum((series[n].get(d, Decimal(0)) for n in names), Decimal(0)) for d in days]
    top = float(max(totals)) or 1.0
    plot_h, left, bottom = 220, 70, 40
    col_w = max(4.0, (W - left - 20) / len(days) - 4)
    parts = [f'<text x="{left - 6}" y="14" text-anchor="end">{_money(top)}</text>',
             f'<line x1="{left}" y1="{plot_h + 10}" x2="{W - 10}" y2="{plot_h + 10}" stroke="#999"/>']
    for i, day in enumerate(days):
        x = left + i * (col_w + 4)
        y = plot_h + 10
        for k, name in enumerate(names):
            v = float(series[name].get(day, 0))
            if v <= 0:
                continue
            hgt = plot_h * v / top
            y -= hgt
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{col_w:.1f}" height="{hgt:.1f}" '
                         f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(day)} · {escape(name)}: '
                         f"{_money(v)}</title></rect>")
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            parts.append(f'<text x="{x:.1f}" y="{plot_h + 26}" font-size="10">{escape(day[5:])}</text>')
    legend_y = plot_h + bottom + 4
    parts += [f'<rect x="{left + k * 130}" y="{legend_y}" width="12" height="12" '
              f'fill="{PALETTE[k % len(PALETTE)]}"/><text x="{left + k * 130 + 16}" y="{legend_y + 10}">'
              f"{escape(name)}</text>" for k, name in enumerate(names[:5])]
    return _figure(chart_id, title, legend_y + 20, "".join(parts))


def _figure(chart_id: str, title: str, height: float, body: str) -> str:
    return (f'<figure class="chart" id="{chart_id}"><figcaption>{escape(title)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height:.0f}" '
            f'viewBox="0 0 {W} {height:.0f}" role="img" aria-label="{escape(title)}">{body}</svg></figure>')


def _empty(chart_id: str, title: str) -> str:
    return (f'<figure class="chart empty" id="{chart_id}"><figcaption>{escape(title)}</figcaption>'
            "<p>No data in this period.</p></figure>")


def _html_cell(row: Any, d: dict[str, Any], name: str) -> str:
    if name in ("cost_usd", "billed_usd", "discount_usd", "ccus"):
        value = getattr(row, name)
        return "—" if value is None else money(value, 4, "") if name == "ccus" else _money(value)
    return f"{d[name]:,}"


def _table(report: Report) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in (*report.by, *CSV_COLUMNS))
    body = []
    for row in [*report.rows, report.total]:
        d = row.as_dict()
        cls = ' class="total"' if row is report.total else ""
        cells = [f"<td>{escape(row.keys[k])}</td>" for k in report.by]
        cells += [f'<td class="num">{escape(_html_cell(row, d, c))}</td>' for c in CSV_COLUMNS]
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} .sub{color:#666;margin-bottom:18px}
.grid{display:grid;grid-template-columns:1fr;gap:18px} figure{margin:0;border:1px solid #ddd;border-radius:6px;
padding:10px 12px} figcaption{font-weight:600;margin-bottom:6px} svg text{font-size:11px;fill:#333}
table{border-collapse:collapse;width:100%;margin-top:18px} th,td{border-bottom:1px solid #eee;padding:4px 8px;
text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums} tr.total td{font-weight:700;
border-top:2px solid #999} .kpi{display:inline-block;margin-right:28px} .kpi b{font-size:20px;display:block}
"""


def burn_down_chart(chart_id: str, b: BurnDown) -> str:
    """Cumulative billed cost by day (solid), the forecast to month end (dashed), the budget (red)."""
    plot_h, left, top, right = 160, 70, 12, 20
    forecast = float(b.forecast.value) if b.forecast else 0.0
    peak = max([float(v) for v in b.cumulative] + [forecast, float(b.budget or 0)]) or 1.0

    def x(day: float) -> float:
        return left + (W - left - right) * day / b.days_in_month

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    elapsed = (b.now - dt.datetime.combine(b.month_start, dt.time(), dt.UTC)).total_seconds() / 86400
    points = " ".join(f"{x(min(i + 1, elapsed)):.1f},{y(float(v)):.1f}" for i, v in enumerate(b.cumulative))
    parts = [f'<line x1="{left}" y1="{y(0):.1f}" x2="{W - right}" y2="{y(0):.1f}" stroke="#999"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{_money(peak)}</text>',
             f'<text x="{left}" y="{y(0) + 16:.1f}">{b.month_start:%b %d}</text>',
             f'<text x="{W - right}" y="{y(0) + 16:.1f}" text-anchor="end">day {b.days_in_month}</text>',
             f'<polyline class="actual" points="{x(0):.1f},{y(0):.1f} {points}" fill="none" stroke="{PALETTE[0]}" '
             f'stroke-width="2"><title>{escape(b.team)}: billed {_money(b.spent)} so far</title></polyline>']
    if b.forecast:
        parts.append(f'<line class="forecast" x1="{x(elapsed):.1f}" y1="{y(float(b.spent)):.1f}" '
                     f'x2="{x(b.days_in_month):.1f}" y2="{y(forecast):.1f}" stroke="{PALETTE[1]}" stroke-width="2" '
                     f'stroke-dasharray="6 4"><title>forecast {_money(b.forecast.value)}: '
                     f'{escape(b.forecast.description)}</title></line>'
                     f'<text x="{W - right}" y="{y(forecast) - 4:.1f}" text-anchor="end">forecast '
                     f'{escape(_money(b.forecast.value))}</text>')
    if b.budget is not None:
        parts.append(f'<line class="budget" x1="{left}" y1="{y(float(b.budget)):.1f}" x2="{W - right}" '
                     f'y2="{y(float(b.budget)):.1f}" stroke="#c0392b" stroke-dasharray="2 2"/>'
                     f'<text x="{left + 4}" y="{y(float(b.budget)) - 4:.1f}">budget {escape(_money(b.budget))}'
                     f"</text>")
    caption = f"Budget burn-down — {b.team} ({b.month_start:%Y-%m}, billed USD)"
    fig = _figure(chart_id, caption, plot_h + top + 24, "".join(parts))
    if b.forecast:
        inputs = ", ".join(f"{k} {v}" for k, v in b.forecast.inputs.items())
        fig = fig.replace("</figure>", f"<p class='sub'>{escape(b.forecast.description)} · {escape(inputs)}</p>"
                                       "</figure>")
    return fig


def paired_columns(chart_id: str, title: str, days: Sequence[tuple[str, Decimal, Decimal]],
                   series: tuple[str, str]) -> str:
    """Two columns per day (the bill, the ledger)."""
    if not days:
        return _empty(chart_id, title)
    top = float(max(max(a, b) for _, a, b in days)) or 1.0
    plot_h, left = 200, 70
    slot = (W - left - 20) / len(days)
    col_w = max(2.0, slot / 2 - 3)
    parts = [f'<text x="{left - 6}" y="14" text-anchor="end">{_money(top)}</text>',
             f'<line x1="{left}" y1="{plot_h + 10}" x2="{W - 10}" y2="{plot_h + 10}" stroke="#999"/>']
    for i, (day, *values) in enumerate(days):
        for k, v in enumerate(values):
            hgt = plot_h * float(v) / top
            xk = left + i * slot + k * (col_w + 1)
            parts.append(f'<rect class="bar" x="{xk:.1f}" y="{plot_h + 10 - hgt:.1f}" width="{col_w:.1f}" '
                         f'height="{max(hgt, 0.5):.1f}" fill="{PALETTE[k]}"><title>{escape(day)} · {series[k]}: '
                         f"{_money(v)}</title></rect>")
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            parts.append(f'<text x="{left + i * slot:.1f}" y="{plot_h + 26}" font-size="10">{escape(day[5:])}</text>')
    parts += [f'<rect x="{left + k * 130}" y="{plot_h + 36}" width="12" height="12" fill="{PALETTE[k]}"/>'
              f'<text x="{left + k * 130 + 16}" y="{plot_h + 46}">{escape(name)}</text>'
              for k, name in enumerate(series)]
    return _figure(chart_id, title, plot_h + 56, "".join(parts))


def finance_view(engine: Engine, report: Report, budgets: list[Budget] | None = None,
                 reconciliation: Sequence[tuple[str, Decimal, Decimal]] | None = None) -> str:
    """List vs billed cost, discount, CCUs, burn-down per team, and the bill vs the ledger when reconciled."""
    fin = finance_summary(engine, report.since, report.until)
    pct = f" ({fin.discount_percent} %)" if fin.discount_percent is not None else ""
    kpis = [("List cost", _exact(fin.list_usd, "$")), ("Discount", _exact(fin.discount_usd, "$") + pct),
            ("Billed", _exact(fin.billed_usd, "$")), ("CCUs ($0.01)", _exact(fin.ccus))]
    kpi_html = "".join(f'<span class="kpi">{escape(k)}<b>{escape(v)}</b></span>' for k, v in kpis)
    charts = [grouped_hbar_chart("billed-vs-list", "Billed vs list cost by team (USD)",
                                 [(t.team, [float(t.list_usd), float(t.billed_usd)]) for t in fin.teams[:12]],
                                 ["list", "billed"], "USD", lambda v: _money(v))]
    charts += [burn_down_chart(f"burn-down-{i}", b) for i, b in enumerate(burn_downs(engine, report.until, budgets))]
    if reconciliation is not None:
        charts.append(paired_columns("bill-vs-ledger", "Azure bill vs ledger per day (billed USD)", reconciliation,
                                     ("bill", "ledger")))
    return (f"<section id='finance'><h2>Finance</h2><div>{kpi_html}</div><div class='grid'>{''.join(charts)}"
            "</div></section>")


def render_html(engine: Engine, report: Report, budgets: list[Budget] | None = None,
                reconciliation: Sequence[tuple[str, Decimal, Decimal]] | None = None) -> str:
    days = [(report.since + dt.timedelta(days=i)).isoformat()
            for i in range((report.until - report.since).days + 1)]
    by_team = daily_series(engine, report.since, report.until, "team")
    by_model = daily_series(engine, report.since, report.until, "model")
    model_items = sorted(((m, float(sum(v.values())), _money(sum(v.values()))) for m, v in by_model.items()),
                         key=lambda x: -x[1])
    # from the rollups, like the table: the same charts before and after retention
    stats = daily_deployment_stats(engine, report.since, report.until)
    latency_items = [(name, [s.p(0.5) or 0.0, s.p(0.95) or 0.0]) for name, s in sorted(stats.items())
                     if s.histogram]
    error_items = [(name, 100 * s.error_rate, f"{100 * s.error_rate:.1f}% of {s.requests}")
                   for name, s in sorted(stats.items())]
    t = report.total
    kpis = [("Cost", _money(t.cost_usd)), ("Unpriced calls", f"{t.unpriced:,}"), ("Requests", f"{t.requests:,}"),
            ("Errors", f"{t.errors:,}"),
            ("Input tokens", f"{t.input_tokens:,}"), ("Output tokens", f"{t.output_tokens:,}")]
    if report.forecast_usd is not None:
        kpis.append(("Month-end forecast", _money(report.forecast_usd)))
    kpi_html = "".join(f'<span class="kpi">{escape(k)}<b>{escape(v)}</b></span>' for k, v in kpis)
    charts = [
        stacked_columns("cost-by-team", "Cost by team over time (USD/day)", days, by_team),
        hbar_chart("cost-by-model", "Cost by model (USD)", model_items, PALETTE[1]),
        grouped_hbar_chart("latency-by-deployment", "Latency by deployment (ms, from daily histograms)", latency_items,
                           ["p50", "p95"], "ms"),
        hbar_chart("errors-by-deployment", "Error rate by deployment (%)", error_items, PALETTE[3]),
    ]
    notes = "".join(f"<p class='sub'>{escape(n)}</p>" for n in report.notes)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Foundry chargeback {report.since} – {report.until}</title><style>{CSS}</style></head><body>"
        f"<h1>Claude on Foundry — chargeback</h1><div class='sub'>{report.since} → {report.until} · grouped by "
        f"{escape(', '.join(report.by))} · generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC</div>"
        f"<div>{kpi_html}</div>{notes}<div class='grid'>{''.join(charts)}</div>{_table(report)}"
        f"{finance_view(engine, report, budgets, reconciliation)}</body></html>"
    )
