"""Run in a subprocess (OTel set-up is process-global): drive calls through the instrumented SDK with the
OTLP variables of the environment, then print what the emulator served and what landed in the ledger.

--no-extra: the OTLP exporter package is not importable (as without `foundry-telemetry[otlp]`).
--exit-flushes: no flush() or shutdown(): the exit hook alone must deliver every row, span and metric.
"""

from __future__ import annotations

import json
import logging
import sys
import time

if "--no-extra" in sys.argv:
    sys.modules["opentelemetry.exporter.otlp.proto.http"] = None  # type: ignore[assignment]

from anthropic import AnthropicFoundry  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from telemetry import Telemetry, usage_context  # noqa: E402
from telemetry.emulator import EmulatorServer  # noqa: E402
from telemetry.ledger.db import get_engine  # noqa: E402
from telemetry.ledger.models import UsageRecordRow  # noqa: E402

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
API_KEY = "sk-test-SECRET-0123456789abcdefghij"
SYSTEM = [{"type": "text", "text": "You are terse. " * 400, "cache_control": {"type": "ephemeral"}}]
USER = [{"role": "user", "content": "PROMPT-TEXT-MARKER"}]

EXIT_FLUSHES = "--exit-flushes" in sys.argv
emu = EmulatorServer().__enter__()  # a daemon thread: in --exit-flushes mode it is never stopped, so nothing
# between the last call and the interpreter's exit gives the pipeline time to catch up
tel = Telemetry.from_env()
client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emu.base_url))
started = time.perf_counter()
with usage_context(team="search", project="ranker"):
    client.messages.create(model="claude-sonnet-5", max_tokens=32, system=SYSTEM, messages=USER)  # cache write
    client.messages.create(model="claude-sonnet-5", max_tokens=32, system=SYSTEM, messages=USER)  # cache read
    client.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=USER,
                           extra_headers={"x-emulator-fault": "429;times=1"})
    events = list(client.messages.create(model="my-claude", max_tokens=32, stream=True, messages=USER))
calls_s = time.perf_counter() - started
url = tel.settings.db_url
landed = None
if not EXIT_FLUSHES:
    tel.flush()
    tel.shutdown()
    with get_engine(url).connect() as conn:
        landed = conn.execute(select(func.count()).select_from(UsageRecordRow)).scalar_one()
flushed_s = time.perf_counter() - started - calls_s
json.dump({"served": emu.emulator.served, "calls_s": calls_s, "flushed_s": flushed_s, "events": len(events),
           "rows": landed, "health": tel.health.snapshot()}, sys.stdout)
sys.stdout.flush()
if not EXIT_FLUSHES:
    emu.__exit__(None, None, None)
