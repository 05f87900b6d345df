"""Run in a subprocess (Azure Monitor set-up is process-global): drive calls through the instrumented SDK
with APPLICATIONINSIGHTS_CONNECTION_STRING set, then print what the emulator served."""

from __future__ import annotations

import json
import sys
import time

from anthropic import AnthropicFoundry

from telemetry import Telemetry, usage_context
from telemetry.emulator import EmulatorServer

API_KEY = "sk-test-SECRET-0123456789abcdefghij"

with EmulatorServer() as emu:
    tel = Telemetry.from_env()
    client = tel.instrument(AnthropicFoundry(api_key=API_KEY, base_url=emu.base_url))
    started = time.perf_counter()
    with usage_context(team="search", project="ranker"):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=32,
                               messages=[{"role": "user", "content": "PROMPT-TEXT-MARKER"}])
        client.messages.create(model="claude-haiku-4-5", max_tokens=32,
                               messages=[{"role": "user", "content": "PROMPT-TEXT-MARKER"}],
                               extra_headers={"x-emulator-fault": "429;times=1"})
        events = list(client.messages.create(model="my-claude", max_tokens=32, stream=True,
                                             messages=[{"role": "user", "content": "PROMPT-TEXT-MARKER"}]))
    calls = time.perf_counter() - started
    tel.flush()
    tel.shutdown()
    json.dump({"served": emu.emulator.served, "calls_s": calls, "events": len(events)}, sys.stdout)
