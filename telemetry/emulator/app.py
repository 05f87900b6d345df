"""The emulator's ASGI app: the Messages API in Foundry's shape (paths, auth, ids, errors)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .faults import Fault, FaultError

FAULT_HEADER = "x-emulator-fault"
DEFAULT_DEPLOYMENTS: dict[str, str] = {
    # today's Foundry models, and custom deployment names in front of them
    "claude-sonnet-5-5": "claude-sonnet-5-5",
    "claude-haiku-5-5": "claude-haiku-5-5",
    "claude-opus-5-5": "claude-opus-5-5",
    "claude-sonnet-5": "claude-sonnet-5",
    "claude-opus-5": "claude-opus-5",
    "chat-prod": "claude-sonnet-5-5",
    "batch-jobs": "claude-haiku-5-5",
    "usdz-chat": "claude-sonnet-5-5",  # a US Data Zone deployment (priced 1.1x)
    # retired on Foundry, still answered so that old code and tests keep working
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5": "claude-haiku-4-5-20251001",
    "claude-opus-4-5": "claude-opus-4-5-20251101",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "my-claude": "claude-sonnet-4-5-20250929",
    "batchy": "claude-haiku-4-5-20251001",
    "usdz-sonnet": "claude-sonnet-4-5-20250929",
    "mystery-model": "claude-experimental-9",  # a model with no published price
}
WORDS = tuple(
    "the quick brown fox jumps over a lazy dog while telemetry counts every token it sees and the ledger "
    "writes each row exactly once".split(" ")
)


def _error_response(status: int, kind: str, message: str, headers: Mapping[str, str]) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}},
                        status_code=status, headers=dict(headers))


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return _text_of(value.get("text") or value.get("content") or "")
    return ""


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class Emulator:
    def __init__(self, deployments: Mapping[str, str] | None = None, api_keys: set[str] | None = None,
                 chunk_delay_ms: float = 0.0) -> None:
        self.deployments = dict(deployments or DEFAULT_DEPLOYMENTS)
        self.api_keys = api_keys
        self.chunk_delay_ms = chunk_delay_ms
        self._cache: dict[str, float] = {}
        self._lock = threading.Lock()
        self.served: list[dict[str, Any]] = []  # what was answered, for tests to compare against

    # -- helpers ---------------------------------------------------------------------------------

    def _error(self, status: int, kind: str, message: str, headers: Mapping[str, str]) -> JSONResponse:
        self.served.append({"request-id": headers.get("request-id"),
                            "apim-request-id": headers.get("apim-request-id"), "status": status, "error": kind})
        return _error_response(status, kind, message, headers)

    def _ids(self) -> dict[str, str]:
        return {"request-id": "req_" + secrets.token_hex(12), "apim-request-id": str(uuid.uuid4())}

    def _authorized(self, request: Request) -> bool:
        key = request.headers.get("api-key") or request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        return bool(key) and (self.api_keys is None or key in self.api_keys)

    def _usage(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Token counts from the text; blocks up to the last `cache_control` are a cacheable prefix."""
        blocks: list[tuple[str, Any]] = []
        system = body.get("system")
        if isinstance(system, list):
            blocks += [(_text_of(b), b.get("cache_control") if isinstance(b, dict) else None) for b in system]
        elif system:
            blocks.append((_text_of(system), None))
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                blocks += [(_text_of(b), b.get("cache_control") if isinstance(b, dict) else None)
                           for b in content]
            else:
                blocks.append((_text_of(content), None))
        total = 4 + sum(_tokens(t) for t, _ in blocks)
        last = max((i for i, (_, cc) in enumerate(blocks) if cc), default=-1)
        usage = {"input_tokens": total, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                 "output_tokens": 0, "service_tier": "standard"}
        if last >= 0:
            prefix = "".join(t for t, _ in blocks[: last + 1])
            cached = sum(_tokens(t) for t, _ in blocks[: last + 1])
            ttl = "1h" if (blocks[last][1] or {}).get("ttl") == "1h" else "5m"
            key = hashlib.sha256(prefix.encode()).hexdigest()
            now = time.monotonic()
            with self._lock:
                hit = self._cache.get(key, 0) > now
                self._cache[key] = now + (3600 if ttl == "1h" else 300)
            usage["input_tokens"] = total - cached
            if hit:
                usage["cache_read_input_tokens"] = cached
            else:
                usage["cache_creation_input_tokens"] = cached
                usage["cache_creation"][f"ephemeral_{ttl}_input_tokens"] = cached
        return usage

    @staticmethod
    def _reply(body: Mapping[str, Any]) -> list[str]:
        seed = int(hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True, default=str)
                                  .encode()).hexdigest()[:8], 16)
        n = 12 + seed % 40
        max_tokens = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else 1024
        return [WORDS[(seed + i) % len(WORDS)] + " " for i in range(min(n, max(max_tokens, 1)))]

    # -- endpoints -------------------------------------------------------------------------------

    async def messages(self, request: Request) -> Response:
        ids = self._ids()
        if not self._authorized(request):
            return self._error(401, "authentication_error", "invalid x-api-key", ids)
        try:
            fault = Fault.parse(request.headers.get(FAULT_HEADER))
        except FaultError as exc:
            return self._error(400, "invalid_request_error", str(exc), ids)
        retry = request.headers.get("x-stainless-retry-count", "0")
        if fault and not fault.applies(int(retry) if retry.isdigit() else 0):
            fault = None
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return self._error(400, "invalid_request_error", "request body is not a JSON object", ids)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._error(400, "invalid_request_error", "model: Field required", ids)
        if model not in self.deployments:
            return self._error(404, "not_found_error", "Deployment not found", ids)
        if not isinstance(body.get("messages"), list):
            return self._error(400, "invalid_request_error", "messages: Field required", ids)
        if fault:
            early = self._early_fault(fault, ids)
            if early is not None:
                return early
        counting = request.url.path.endswith("/count_tokens")
        usage = self._usage(body)
        if counting:
            total = usage["input_tokens"] + usage["cache_creation_input_tokens"] + usage["cache_read_input_tokens"]
            self.served.append({**ids, "status": 200, "deployment": model, "input_tokens": total})
            return JSONResponse({"input_tokens": total}, headers=ids)
        words = self._reply(body)
        usage["output_tokens"] = len(words)
        stop = "max_tokens" if len(words) >= (body.get("max_tokens") or 0) else "end_turn"
        message = {
            "id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
            "model": self.deployments[model], "content": [{"type": "text", "text": "".join(words)}],
            "stop_reason": stop, "stop_sequence": None, "usage": usage,
        }
        self.served.append({**ids, "status": 200, "deployment": model, "model": message["model"],
                            "usage": usage, "stream": bool(body.get("stream")),
                            "fault": fault.kind if fault else None})
        if fault and fault.kind == "slow" and not body.get("stream"):
            await asyncio.sleep(fault.delay_ms / 1000)
        if body.get("stream"):
            return StreamingResponse(self._events(message, words, fault), media_type="text/event-stream",
                                     headers={**ids, "cache-control": "no-cache"})
        if fault and fault.kind == "malformed":
            return Response('{"id": "msg_', media_type="application/json", headers=ids)
        return JSONResponse(message, headers=ids)

    def _early_fault(self, fault: Fault, ids: dict[str, str]) -> Response | None:
        if fault.kind == "429":
            return self._error(429, "rate_limit_error", "Rate limit reached for requests",
                          {**ids, "retry-after": "1", "retry-after-ms": "10"})
        if fault.kind == "529":
            return self._error(529, "overloaded_error", "Overloaded", ids)
        if fault.kind == "500":
            return self._error(500, "api_error", "Internal server error", ids)
        if fault.kind == "403":
            return self._error(403, "permission_error", "Principal does not have access to this deployment", ids)
        return None

    async def _events(self, message: dict[str, Any], words: list[str], fault: Fault | None
                      ) -> AsyncIterator[bytes]:
        def sse(event: str, data: Mapping[str, Any]) -> bytes:
            return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

        if fault and fault.kind == "malformed":
            yield b"event: message_start\ndata: {not json\n\n"
            return
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}
        yield sse("message_start", {"type": "message_start", "message": start})
        yield sse("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})
        yield sse("ping", {"type": "ping"})
        if fault and fault.kind == "slow":
            await asyncio.sleep(fault.delay_ms / 1000)
        half = max(1, len(words) // 2)
        for i in range(0, len(words), 3):
            if fault and i >= half:
                if fault.kind == "cut":
                    return
                if fault.kind == "drop":
                    raise ConnectionResetError("emulator dropped the connection")
                if fault.kind == "error-event":
                    yield sse("error", {"type": "error",
                                        "error": {"type": "overloaded_error", "message": "Overloaded"}})
                    return
            if self.chunk_delay_ms:
                await asyncio.sleep(self.chunk_delay_ms / 1000)
            yield sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": "".join(words[i:i + 3])}})
        yield sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield sse("message_delta", {"type": "message_delta",
                                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                    "usage": {k: v for k, v in usage.items() if k != "service_tier"}})
        yield sse("message_stop", {"type": "message_stop"})

    async def not_on_foundry(self, request: Request) -> Response:
        return self._error(404, "not_found_error", f"{request.url.path} is not available on Foundry", self._ids())


def create_app(emulator: Emulator | None = None) -> Starlette:
    emu = emulator or Emulator()
    app = Starlette(routes=[
        Route("/anthropic/v1/messages", emu.messages, methods=["POST"]),
        Route("/anthropic/v1/messages/count_tokens", emu.messages, methods=["POST"]),
        Route("/anthropic/v1/messages/batches{rest:path}", emu.not_on_foundry, methods=["GET", "POST", "DELETE"]),
        Route("/anthropic/v1/models{rest:path}", emu.not_on_foundry, methods=["GET"]),
        Route("/anthropic/v1/organizations{rest:path}", emu.not_on_foundry, methods=["GET", "POST", "DELETE"]),
    ])
    app.state.emulator = emu
    return app
