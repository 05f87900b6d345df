"""The request path (SDK middleware or transport → capture → hand-off) does no I/O — no audit-visible
operation and no write(2) on the caller's thread, with the ledger, its journal and OTel providers on — and keeps
a bounded number of objects per call: everything slow or allocating happens on the pipeline thread.

Calls go through the real SDK into `httpx2.MockTransport`, so the only I/O a caller could see is ours.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from anthropic import AnthropicFoundry

from telemetry import Telemetry, usage_context

MSG = [{"role": "user", "content": "hi"}]
MESSAGE = json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
                      "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
                      "usage": {"input_tokens": 10, "output_tokens": 5}}).encode()
SSE = b"".join(b"event: %s\ndata: %s\n\n" % pair for pair in [
    (b"message_start", b'{"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
                       b'"model":"claude-haiku-4-5","content":[],"usage":{"input_tokens":7,"output_tokens":1}}}'),
    *[(b"content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}')
      ] * 8,
    (b"message_delta", b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}'),
    (b"message_stop", b'{"type":"message_stop"}'),
])
# what a call must never do on the caller's thread (CPython audit events)
IO_EVENTS = ("open", "socket.", "sqlite3.", "subprocess.", "os.", "shutil.", "tempfile.", "import")
PER_CALL_OBJECTS = 64  # blocks a call may keep alive until the pipeline takes its capture (measured: ~30)


def _handler(request: Any) -> Any:
    mod = httpx2 if isinstance(request, httpx2.Request) else httpx
    if json.loads(request.content).get("stream"):
        return mod.Response(200, content=SSE, headers={"content-type": "text/event-stream", "request-id": "req_s"})
    return mod.Response(200, content=MESSAGE, headers={"content-type": "application/json", "request-id": "req_c"})


def _client(tel: Telemetry | None) -> AnthropicFoundry:
    client = AnthropicFoundry(api_key="k", base_url="http://127.0.0.1:9/anthropic/", max_retries=0,
                              http_client=httpx2.Client(transport=httpx2.MockTransport(_handler)))
    return tel.instrument(client) if tel else client


def _create(client: Any) -> None:
    client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)


def _stream(client: Any) -> None:
    for _ in client.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG, stream=True):
        pass


def _transport(tel: Telemetry) -> Callable[[], None]:
    http = tel.httpx_client(transport=httpx.MockTransport(_handler))
    return lambda: http.post("https://r.services.ai.azure.com/anthropic/v1/messages",
                             json={"model": "claude-haiku-4-5", "max_tokens": 8, "messages": MSG}).read()


_watching: dict[int, list[str]] = {}


def _audit(event: str, _args: Any) -> None:
    seen = _watching.get(threading.get_ident())
    if seen is not None and event.startswith(IO_EVENTS):
        seen.append(event)


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one only records while a test watches


@contextmanager
def _io_events() -> Iterator[list[str]]:
    seen: list[str] = []
    _watching[threading.get_ident()] = seen
    try:
        yield seen
    finally:
        _watching.pop(threading.get_ident(), None)


@pytest.fixture
def quiet_tel(tmp_path: Any) -> Iterator[Telemetry]:
    """No ledger, no providers: the pipeline thread is the only consumer of the captures."""
    tel = Telemetry(db_url=f"sqlite:///{tmp_path}/unused.db", ledger=False)
    yield tel
    tel.shutdown()


def _write_syscalls() -> int:
    """write(2)-family calls this thread has made (Linux per-thread I/O accounting); reading it is a read."""
    with open(f"/proc/self/task/{threading.get_native_id()}/io") as fh:
        return int(next(line for line in fh if line.startswith("syscw:")).split()[1])


@pytest.fixture
def ledger_tel(tmp_path: Any) -> Iterator[Telemetry]:
    """Ledger and journal on, OTel providers on: everything a record goes through."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    tel = Telemetry(db_url=f"sqlite:///{tmp_path}/ledger.db", spool_dir=f"{tmp_path}/spool",
                    tracer_provider=tp, meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    yield tel
    tel.shutdown()
    tp.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread I/O accounting is Linux's")
@pytest.mark.parametrize("call", [_create, _stream], ids=["create", "stream"])
def test_request_path_does_no_io_with_ledger_journal_and_otel_on(ledger_tel, tmp_path, call):
    raw, inst = _client(None), _client(ledger_tel)
    for _ in range(5):
        call(raw)
        call(inst)
    assert ledger_tel.flush()
    writes = _write_syscalls()
    with _io_events() as raw_events:
        for _ in range(20):
            call(raw)
    raw_writes = _write_syscalls() - writes
    writes = _write_syscalls()
    with usage_context(team="t"), _io_events() as events:
        for _ in range(20):
            call(inst)
    inst_writes = _write_syscalls() - writes
    assert [e for e in events if e not in raw_events] == []
    assert inst_writes == raw_writes == 0
    # ... and yet the journal has every call within a few poll intervals, with no flush asked for
    journal = Path(f"{tmp_path}/spool")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = sum(p.read_bytes().count(b"\n") - 1 for p in journal.rglob("*.jnl"))
        if lines >= 20:
            break
        time.sleep(0.01)
    assert lines >= 20
    assert ledger_tel.flush() and ledger_tel.processed == 25


@pytest.mark.parametrize("call", [_create, _stream], ids=["create", "stream"])
def test_request_path_does_no_io(quiet_tel, call):
    raw, inst = _client(None), _client(quiet_tel)
    for _ in range(5):  # warm-up: first-call imports and caches belong to start-up
        call(raw)
        call(inst)
    quiet_tel.flush()
    with _io_events() as raw_events:
        for _ in range(20):
            call(raw)
    with usage_context(team="t", project="p"), _io_events() as events:
        for _ in range(20):
            call(inst)
    assert quiet_tel.flush() and quiet_tel.processed == 25
    assert [e for e in events if e not in raw_events] == []


def test_transport_path_does_no_io(quiet_tel):
    post = _transport(quiet_tel)
    for _ in range(5):
        post()
    with _io_events() as events:
        for _ in range(20):
            post()
    assert quiet_tel.flush() and quiet_tel.processed == 25
    assert events == []


def _blocks_kept(call: Callable[[], None], n: int) -> int:
    gc.collect()
    gc.disable()
    try:
        before = sys.getallocatedblocks()
        for _ in range(n):
            call()
        return sys.getallocatedblocks() - before
    finally:
        gc.enable()


@pytest.mark.parametrize("call", [_create, _stream], ids=["create", "stream"])
def test_request_path_keeps_a_bounded_number_of_objects_per_call(quiet_tel, call):
    raw, inst = _client(None), _client(quiet_tel)
    for _ in range(20):
        call(raw)
        call(inst)
    quiet_tel.flush()
    n = 200
    # hold the pipeline so what the calls leave behind stays countable (the captures wait in the hand-off)
    with quiet_tel._pipeline._lock:
        baseline = _blocks_kept(lambda: call(raw), n)
        kept = _blocks_kept(lambda: call(inst), n)
    per_call = (kept - baseline) / n
    assert 0 < per_call <= PER_CALL_OBJECTS, per_call
    assert quiet_tel.flush() and quiet_tel.processed == 20 + n  # every held capture still becomes a record
