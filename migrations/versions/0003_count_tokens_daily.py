"""usage_daily: count_tokens attempts and tokens kept apart from billed calls and tokens.

Token counting is free. Rows the older writer already ledgered (billed as input, counted as calls) are corrected
here for the days still inside retention: each count_tokens row's cost becomes 0, and its call, tokens and cost
move out of the billed columns of its daily total into the new ones. Older days have no rows left to say what
was counted, so their totals stay as they are.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from telemetry.ledger.store import tags_key

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DIMS = ("day", "team", "project", "user", "deployment", "model", "tags")


def _day(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo is None else value.astimezone(dt.UTC)).date()
    return dt.date.fromisoformat(str(value)[:10])  # SQLite: naive UTC text


def _move_count_tokens_out_of_billed_totals() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        'SELECT created_at, team, project, "user", deployment, model, tags, input_tokens, cost_usd '
        "FROM usage_records WHERE operation = 'count_tokens'")).all()
    moves: dict[tuple[object, ...], list[int]] = {}
    for created, team, project, user, deployment, model, tags, tokens, cost in rows:
        if isinstance(tags, str):
            tags = json.loads(tags) if tags else {}
        key = (_day(created), (team or "")[:128], (project or "")[:128], (user or "")[:128],
               (deployment or "")[:128], (model or "")[:128], tags_key(tags or None))
        m = moves.setdefault(key, [0, 0, 0, 0])
        m[0] += 1
        m[1] += int(tokens or 0)
        if cost is None:
            m[3] += 1
        else:
            m[2] += int(Decimal(str(cost)).scaleb(10))
    for key, (calls, tokens, cost_e10, unpriced) in moves.items():
        bind.execute(sa.text(
            "UPDATE usage_daily SET requests = requests - :calls, input_tokens = input_tokens - :tokens, "
            "cost_e10 = cost_e10 - :cost, unpriced = unpriced - :unpriced, "
            "count_tokens_requests = count_tokens_requests + :calls, "
            "count_tokens_input_tokens = count_tokens_input_tokens + :tokens "
            'WHERE day = :day AND team = :team AND project = :project AND "user" = :user '
            "AND deployment = :deployment AND model = :model AND tags = :tags"),
            {**dict(zip(_DIMS, key, strict=True)), "calls": calls, "tokens": tokens, "cost": cost_e10,
             "unpriced": unpriced})
    if rows:
        zero = "0.0000000000" if bind.dialect.name == "sqlite" else Decimal(0)
        bind.execute(sa.text("UPDATE usage_records SET cost_usd = :zero WHERE operation = 'count_tokens'"),
                     {"zero": zero})


def upgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch:
        batch.add_column(sa.Column("count_tokens_requests", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("count_tokens_input_tokens", sa.BigInteger(), nullable=False,
                                   server_default="0"))
    _move_count_tokens_out_of_billed_totals()


def downgrade() -> None:
    with op.batch_alter_table("usage_daily") as batch:
        batch.drop_column("count_tokens_input_tokens")
        batch.drop_column("count_tokens_requests")
