"""`foundry-telemetry demo`: the emulator, mixed traffic through the instrumented official SDK, the report."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
from anthropic import AnthropicFoundry, AsyncAnthropicFoundry
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import Telemetry, usage_context
from .emulator import FAULT_HEADER, EmulatorServer

DEMO_DEPLOYMENTS = "chat-prod=claude-sonnet-5-5,batch-jobs=claude-haiku-5-5,usdz-chat=claude-sonnet-5-5*1.1"
TEAMS = [("search", "ranker"), ("search", "query-rewrite"), ("support", "chatbot"), ("finance", "reports"),
         ("research", "agents")]
# models a Foundry user can call today (none the SDK warns about), plus custom deployment names
DEPLOYMENTS = ["claude-sonnet-5-5", "claude-haiku-5-5", "chat-prod", "batch-jobs", "usdz-chat", "claude-opus-5-5"]
USERS = ["alice", "bob", "carol", "dan", "erin"]
SYSTEM = [{"type": "text", "text": "You are a precise analyst for Contoso. Answer briefly. " * 60,
           "cache_control": {"type": "ephemeral"}}]


def _plan(n: int, rng: random.Random) -> list[dict[str, Any]]:
    plan = []
    for i in range(n):
        team, project = rng.choice(TEAMS)
        roll = rng.random()
        fault = None
        if roll < 0.06:
            fault = "429;times=1"
        elif roll < 0.09:
            fault = "500;times=1"
        elif roll < 0.10:
            fault = "529"
        elif roll < 0.12:
            fault = "slow;delay_ms=150"
        kind = rng.choices(["sync", "stream", "helper", "async"], [50, 20, 10, 20])[0]
        plan.append({"i": i, "team": team, "project": project, "user": rng.choice(USERS),
                     "deployment": rng.choice(DEPLOYMENTS), "kind": kind, "fault": fault,
                     "cached": rng.random() < 0.3, "max_tokens": rng.choice([64, 128, 256])})
    return plan


def _kwargs(item: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": item["deployment"], "max_tokens": item["max_tokens"],
        "messages": [{"role": "user", "content": f"Request {item['i']}: summarize ticket #{item['i'] % 37}."}],
    }
    if item["cached"]:
        kwargs["system"] = SYSTEM
    if item["fault"]:
        kwargs["extra_headers"] = {FAULT_HEADER: item["fault"]}
    return kwargs


def _run_sync(client: AnthropicFoundry, item: dict[str, Any]) -> None:
    with usage_context(team=item["team"], project=item["project"], user=item["user"], tags={"demo": "true"}):
        try:
            if item["kind"] == "stream":
                for _ in client.messages.create(stream=True, **_kwargs(item)):
                    pass
            elif item["kind"] == "helper":
                with client.messages.stream(**_kwargs(item)) as stream:
                    stream.get_final_message()
            else:
                client.messages.create(**_kwargs(item))
        except anthropic.APIError:
            pass  # the demo shows failures too: they are in the ledger


async def _run_async(client: AsyncAnthropicFoundry, items: list[dict[str, Any]], advance: Any) -> None:
    async def one(item: dict[str, Any]) -> None:
        with (usage_context(team=item["team"], project=item["project"], user=item["user"], tags={"demo": "true"}),
              contextlib.suppress(anthropic.APIError)):
            await client.messages.create(**_kwargs(item))
        advance()

    await asyncio.gather(*(one(item) for item in items))


def run_demo(db_url: str, requests: int, html_path: Path, console: Console, seed: int = 7) -> str | None:
    """Returns the request-id it looks up at the end."""
    from .ledger.db import get_engine
    from .reports.chargeback import chargeback
    from .reports.html import render_html
    from .reports.period import parse_period
    from .reports.render import to_table

    rng = random.Random(seed)
    plan = _plan(requests, rng)
    with EmulatorServer() as emu:
        console.print(f"Foundry emulator on [bold]{emu.base_url}[/bold]; ledger [bold]{db_url}[/bold]")
        # the emulator serves from this process, its threads competing for the GIL with the pipeline's: callers
        # waiting for a journal behind them (the default, for SIGKILL safety) would only slow its own server
        tel = Telemetry.from_env(db_url=db_url, deployments=DEMO_DEPLOYMENTS, journal_catch_up_ms=0)
        client = tel.instrument(AnthropicFoundry(api_key="demo-key", base_url=emu.base_url))
        aclient = tel.instrument(AsyncAnthropicFoundry(api_key="demo-key", base_url=emu.base_url))
        lock = threading.Lock()
        with Progress(TextColumn("[bold]calling Claude on the emulator"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("calls", total=len(plan))

            def advance() -> None:
                with lock:
                    progress.advance(task)

            sync_items = [p for p in plan if p["kind"] != "async"]
            async_items = [p for p in plan if p["kind"] == "async"]

            def run(item: dict[str, Any]) -> None:
                _run_sync(client, item)
                advance()

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(run, sync_items))
            asyncio.run(_run_async(aclient, async_items, advance))
        tel.shutdown()

    engine = get_engine(db_url)
    since, until = parse_period("mtd", None)
    to_table(chargeback(engine, since, until, ["deployment"]), console)
    report = chargeback(engine, since, until, ["team", "project"])
    to_table(report, console)
    html_path.write_text(render_html(engine, report), encoding="utf-8")
    console.print(f"HTML report written to [bold]{html_path}[/bold]")
    retried = [s for s in emu.emulator.served if s.get("status") == 429]
    target = retried[-1]["request-id"] if retried else emu.emulator.served[-1]["request-id"]
    return target
