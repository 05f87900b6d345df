"""Fault injection, chosen per request by the `x-emulator-fault` header so a test asks for exactly one.

`x-emulator-fault: KIND[;times=N][;delay_ms=D]` — KIND is one of the keys of `FAULTS`. `times=N` applies
the fault only to the first N attempts of a call (by the SDK's `x-stainless-retry-count`), so
`429;times=1` is one rate-limited attempt followed by a success.
"""

from __future__ import annotations

from dataclasses import dataclass

FAULTS = {
    "429": "rate limited, with retry-after",
    "529": "overloaded",
    "500": "internal server error",
    "403": "permission denied",
    "slow": "first token delayed by delay_ms (default 300)",
    "cut": "stream ends cleanly before message_stop",
    "drop": "connection dropped mid-stream",
    "error-event": "an `event: error` (overloaded_error) mid-stream",
    "malformed": "a 200 whose body is not valid JSON / SSE",
}


class FaultError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str
    times: int | None = None
    delay_ms: int = 300

    @classmethod
    def parse(cls, header: str | None) -> Fault | None:
        if not header:
            return None
        kind, *opts = (part.strip() for part in header.split(";"))
        if kind not in FAULTS:
            raise FaultError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
        values: dict[str, int] = {}
        for opt in opts:
            key, _, value = opt.partition("=")
            if key not in ("times", "delay_ms") or not value.isdigit():
                raise FaultError(f"bad fault option {opt!r}")
            values[key] = int(value)
        return cls(kind, values.get("times"), values.get("delay_ms", 300))

    def applies(self, retry_count: int) -> bool:
        return self.times is None or retry_count < self.times
