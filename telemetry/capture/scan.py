"""Incremental scanners of a response body: what of it the record needs, in bounded memory whatever its size.

A capture holds the raw chunks of a response only up to `HOLD_BYTES`; past that it feeds them to one of
these and lets them go (state.py). The pipeline thread feeds the rest at the end (parse.py), so a response
is scanned by the same code whether it is 1 KiB or 1 GiB, and a short one costs the request path nothing.

- `SseScan`: server-sent events, event by event as they complete; keeps the payloads usage parsing needs
  (`message_start`, `message_delta`, `error`; content deltas only when content capture is on) and every
  content delta's arrival time; everything else is dropped as its event ends.
- `JsonScan`: a JSON body is held whole up to `JSON_CAP` (and parsed with `json.loads`); beyond it, scanned
  as it passes: the top-level members are kept except `content`, whose value is skipped unkept. The gateway
  holds a Messages *request* body with it too, skipping `REQUEST_SKIPPED` (the prompt, the system prompt and
  the tool definitions: where a 32 MB request's images and documents are) and keeping model, max_tokens, ...
Both undo gzip/deflate incrementally when the bytes are still encoded.
"""

from __future__ import annotations

import functools
import json
import re
import zlib
from array import array
from collections.abc import Iterable
from typing import Any

HOLD_BYTES = 64 * 1024  # raw response bytes a capture holds before it scans and lets them go
JSON_CAP = 1024 * 1024  # a JSON body up to this size is parsed whole; above, scanned without content
MAX_KEPT = 1024 * 1024  # bytes an SSE scan keeps at most (a pending event, kept payloads, kept text)
_PARSED_EVENTS = frozenset({"message_start", "message_delta", "error"})
_scan_once = json.JSONDecoder().scan_once  # the C scanner json.loads ends in
_JSON_WS = " \t\n\r"


def loads(data: bytes) -> Any:
    """`json.loads(data)`: the same value, or the same error. The usual case (UTF-8 bytes holding one JSON
    value) goes straight to the C scanner, without `json.loads`'s Python-level encoding detection and its
    two whitespace regexes (a third of its time on a Messages response); anything else, `json.loads` itself."""
    try:
        text = data.decode()
        value, end = _scan_once(text, 0)
        if end == len(text) or not text[end:].strip(_JSON_WS):
            return value
    except Exception:  # not UTF-8, not JSON at 0 (a BOM, leading space), ...: as json.loads says
        pass
    return json.loads(data)


def parse_json(raw: bytes | None) -> Any:
    """A body parsed, or None when it is empty or not JSON."""
    try:
        return loads(raw) if raw else None
    except ValueError:
        return None
_DELTA_LINE = b"event: content_block_delta\n"
_TIME, _DROP, _STOP = object(), object(), object()
# an event's first line as servers write it → what the scan does with the event. A content delta counts its
# time whatever follows (only its time is needed); the others take this way only in the usual shape (one data
# line after it), anything else goes the general way (`SseScan._block`), which gives the same for the usual
_USUAL_HEADS: dict[bytes, object] = {
    b"event: content_block_delta": _TIME, b"event: content_block_start": _DROP, b"event: content_block_stop": _DROP,
    b"event: ping": _DROP, b"event: message_stop": _STOP,
    **{b"event: " + name.encode(): name for name in _PARSED_EVENTS}}
_USUAL_HEADS_TEXT = {k: v for k, v in _USUAL_HEADS.items() if v is not _TIME}  # content capture: deltas kept


class _Inflate:
    """gzip/deflate undone chunk by chunk; bytes that turn out not to be encoded (a body the HTTP client has
    already decoded still carries the header) pass through as they are."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        self._d: Any = None
        self._raw = False
        self._started = False

    def __call__(self, data: bytes) -> bytes:
        if self._raw:
            return data
        if not self._started:
            self._started = True
            if self._gzip and data[:2] != b"\x1f\x8b":
                self._raw = True
                return data
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)
            try:
                return self._d.decompress(data)
            except zlib.error:
                if self._gzip:
                    self._raw = True
                    return data
                self._d = zlib.decompressobj(-zlib.MAX_WBITS)  # deflate without the zlib wrapper
        try:
            return self._d.decompress(data)
        except zlib.error:
            self._raw = True
            return data

    def flush(self) -> bytes:
        if self._raw or self._d is None:
            return b""
        try:
            return self._d.flush()
        except zlib.error:
            return b""


def inflater(encoding: str | None) -> _Inflate | None:
    if not encoding:
        return None
    encoding = encoding.lower().strip()
    return _Inflate(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None


@functools.lru_cache(maxsize=64)
def _event_name(raw: bytes) -> str:
    return raw.strip().decode("utf-8", "replace")


class SseScan:
    __slots__ = ("events", "delta_times", "completed", "overflow", "size", "_pending", "_inflate", "_keep_text",
                 "_kept", "_t_last")

    def __init__(self, encoding: str | None = None, keep_text: bool = False) -> None:
        self.events: list[tuple[str, bytes]] = []  # (event, data) of the events whose payload the record needs
        self.delta_times = array("q")  # arrival (perf_counter_ns) of each content_block_delta: 8 bytes each
        self.completed = False  # message_stop seen
        self.overflow = False  # something was too big to keep: the record says so instead of holding it
        self.size = 0  # body bytes seen (as received)
        self._pending = b""  # the start of an event not yet complete
        self._inflate = inflater(encoding)
        self._keep_text = keep_text
        self._kept = 0
        self._t_last = 0

    def feed(self, t: int, data: bytes) -> None:
        self.feed_many(((t, data),))

    def feed_many(self, chunks: Iterable[tuple[int, bytes]]) -> None:
        """Feed (arrival, bytes) chunks in order: one call for all a capture holds, the state in locals."""
        inflate = self._inflate
        pending = self._pending
        times = self.delta_times
        events = self.events
        kept = self._kept
        fast = not self._keep_text
        usual = _USUAL_HEADS if fast else _USUAL_HEADS_TEXT
        size = self.size
        t = self._t_last
        try:
            for t, data in chunks:
                size += len(data)
                if inflate is not None:
                    data = inflate(data)
                if pending:
                    data = pending + data
                elif (fast and data.startswith(_DELTA_LINE) and data.find(b"\n\n") == len(data) - 2
                      and b"\r" not in data):
                    times.append(t)  # a chunk that is one content delta, whole: how a stream mostly arrives
                    continue
                if b"\r" in data:
                    data = data.replace(b"\r\n", b"\n")
                blocks = data.split(b"\n\n")
                pending = blocks.pop()  # after the last blank line: an event still arriving (b"" when none)
                if len(pending) > MAX_KEPT:  # an "event" this long is not one the record needs: drop it, say so
                    self.overflow = True
                    pending = b""
                for block in blocks:
                    if fast and block.startswith(_DELTA_LINE):  # most events: only their time matters
                        times.append(t)
                        continue
                    nl = block.find(b"\n")  # the usual shape: one event line, one data line
                    kind = usual.get(block[:nl]) if nl > 0 else None
                    if kind is None or not block.startswith(b"data:", nl + 1) or block.find(b"\n", nl + 1) >= 0:
                        if block:  # not the usual shape: the general way
                            self._block(block, t)
                    elif kind is _STOP:
                        self.completed = True
                    elif kind is not _DROP:  # an event the record reads
                        payload = block[nl + 6:].strip()
                        kept += len(payload)
                        if kept > MAX_KEPT:
                            self.overflow = True
                        else:
                            events.append((kind, payload))
        finally:
            self._pending = pending
            self.size = size
            self._t_last = t
            self._kept = kept

    def finish(self) -> None:
        """The body ended: an event left without its closing blank line still counts (as a parser of the
        whole body would read it)."""
        if self._inflate is not None:
            tail = self._inflate.flush()
            if tail:
                self.feed(self._t_last, tail)
                self.size -= len(tail)
        pending, self._pending = self._pending, b""
        for block in pending.split(b"\n\n"):
            if block:
                self._block(block, self._t_last)

    def _block(self, block: bytes, t: int) -> None:
        head, _, rest = block.partition(b"\n")
        if head.startswith(b"event:") and rest.startswith(b"data:") and b"\n" not in rest:
            event, data = _event_name(head[6:]), rest[5:].strip()  # the usual shape: one event, one data line
        else:
            event = None
            lines = []
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    event = _event_name(line[6:])
                elif line.startswith(b"data:"):
                    lines.append(line[5:].strip())
            if event is None:
                return  # data-only events are dropped by the SDKs too
            data = b"\n".join(lines)
        if event == "content_block_delta":
            self.delta_times.append(t)
            if not self._keep_text:
                return
        elif event == "message_stop":
            self.completed = True
            return
        elif event not in _PARSED_EVENTS:
            return
        self._kept += len(data)
        if self._kept > MAX_KEPT:
            self.overflow = True
            return
        self.events.append((event, data))


_STRUCT = re.compile(rb'["{}\[\],]')
_STR_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+')  # a string's bytes up to its closing quote (or the end)
_SKIPPED = frozenset({b"content"})
REQUEST_SKIPPED = frozenset({b"messages", b"system", b"tools"})  # request attributes are read from the rest


class JsonScan:
    __slots__ = ("size", "overflow", "_inflate", "_parts", "_held", "_scanning", "_out", "_depth", "_in_str",
                 "_expect_key", "_key", "_skip", "_carry", "_skipped")

    def __init__(self, encoding: str | None = None, skip: frozenset[bytes] = _SKIPPED) -> None:
        self.size = 0
        self.overflow = False
        self._inflate = inflater(encoding)
        self._parts: list[bytes] = []
        self._held = 0
        self._scanning = False
        self._out = bytearray()  # the body without its skipped members, once scanning
        self._depth = 0
        self._in_str = False
        self._expect_key = False
        self._key: bytearray | None = None  # a top-level key being read
        self._skip = False
        self._carry = b""
        self._skipped = skip  # top-level members whose values a scan leaves out (raw key bytes)

    def feed(self, t: int, data: bytes) -> None:
        self.size += len(data)
        if self._inflate is not None:
            data = self._inflate(data)
        if self._scanning:
            self._scan(data)
            return
        self._parts.append(data)
        self._held += len(data)
        if self._held > JSON_CAP:
            parts, self._parts = self._parts, []
            self._scanning = True
            for part in parts:
                self._scan(part)

    def feed_many(self, chunks: Iterable[tuple[int, bytes]]) -> None:
        for t, data in chunks:
            self.feed(t, data)

    def finish(self) -> None:
        if self._inflate is not None:
            tail = self._inflate.flush()
            if tail:
                self.feed(0, tail)
                self.size -= len(tail)

    def kept(self) -> bytes | None:
        """The body as held: whole up to `JSON_CAP`, else without the skipped members' values (each `null`);
        None when even that was too big to keep."""
        if self.overflow:
            return None
        if self._scanning:
            return bytes(self._out)
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)

    def payload(self) -> Any:
        """The parsed body (content left out if it was scanned), or None when it is not JSON."""
        return parse_json(self.kept())

    def _scan(self, data: bytes) -> None:
        """Copy `data` to the kept document, leaving out the values of skipped top-level members. One regex
        step per structural character outside strings and one per string: strings are skipped at C speed."""
        if self._carry:
            data = self._carry + data
            self._carry = b""
        out = self._out
        i, n = 0, len(data)
        start = None if self._skip else 0  # where the bytes still to copy begin (None: inside a skipped value)
        while i < n:
            if self._in_str:
                j = _STR_BODY.match(data, i).end()  # type: ignore[union-attr]
                if self._key is not None:
                    self._key += data[i:j]
                    if len(self._key) > 64:
                        self._key = bytearray(b"?")  # no key of interest is this long
                if j >= n or data[j] != 0x22:  # the string goes on in the next chunk (j < n: a lone backslash)
                    if start is not None:
                        out += data[start:j]
                    self._carry = data[j:]
                    return
                self._in_str = False
                i = j + 1
                if self._key is not None:
                    key, self._key = bytes(self._key), None
                    self._expect_key = False
                    if key in self._skipped and start is not None:
                        out += data[start:i]
                        out += b":null"
                        start = None
                        self._skip = True
                continue
            m = _STRUCT.search(data, i)
            if m is None:
                break
            c = data[m.start()]
            i = m.end()
            if c == 0x22:  # "
                self._in_str = True
                if self._depth == 1 and self._expect_key:
                    self._key = bytearray()
            elif c in (0x7B, 0x5B):  # { [
                self._depth += 1
                if self._depth == 1:
                    self._expect_key = c == 0x7B
            elif c in (0x7D, 0x5D):  # } ]
                if self._depth == 1 and self._skip:
                    self._skip = False
                    start = i - 1
                self._depth -= 1
            elif self._depth == 1:  # , between top-level members
                self._expect_key = True
                if self._skip:
                    self._skip = False
                    start = i - 1
        if start is not None:
            out += data[start:n]
        if len(out) > JSON_CAP:  # top-level members other than content this big: not a Messages response
            self.overflow = True
            self._out = bytearray()
