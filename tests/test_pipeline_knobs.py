"""How a pipeline shares the GIL (`hold_s`, `yield_gil`) and draws record ids (`new_id`) are attributes of each
Pipeline, read by its worker per hand-off: two Telemetry instances in one process can differ, which is what lets
bench/tail.py alternate old and new behaviour block by block. No timing asserts: the worker is held on its lock
while captures queue up, so the next hand-off holds several records for certain."""

from __future__ import annotations

import itertools
import re
from typing import Any

from telemetry import Telemetry

from .test_request_path import _client, _create, _stream


class Keep:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def write(self, record: Any) -> None:
        self.records.append(record)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self, timeout: float | None = None) -> None:
        pass


def _queued_calls(tel: Telemetry, n: int) -> None:
    """n calls whose captures all wait for the worker: its first record blocks on the pipeline lock."""
    client = _client(tel)
    with tel._pipeline._lock:
        for i in range(n):
            (_create if i % 2 else _stream)(client)
    assert tel.flush(10)


def test_two_pipelines_in_one_process_share_the_gil_each_their_own_way():
    offers = {"every": 0, "never": 0}
    keep = {"every": Keep(), "never": Keep()}
    tels = {name: Telemetry(ledger=False, sinks=[keep[name]]) for name in offers}
    try:
        ids = (f"{i:032x}" for i in itertools.count(1))
        tels["every"]._pipeline.hold_s = 0.0  # offer after every record of a hand-off
        tels["every"]._pipeline.yield_gil = lambda: offers.__setitem__("every", offers["every"] + 1)
        tels["every"]._pipeline.new_id = lambda: next(ids)
        tels["never"]._pipeline.hold_s = 1e9
        tels["never"]._pipeline.yield_gil = lambda: offers.__setitem__("never", offers["never"] + 1)
        for tel in tels.values():
            _queued_calls(tel, 8)
    finally:
        for tel in tels.values():
            tel.shutdown()
    # every call recorded by its own pipeline, whatever the knobs
    assert [len(k.records) for k in keep.values()] == [8, 8]
    assert all(r.status_code == 200 and r.output_tokens == 5 for k in keep.values() for r in k.records)
    # one pipeline offered the GIL between the items it held (at most once per record), the other never
    assert 1 <= offers["every"] <= 8
    assert offers["never"] == 0
    # ids from that pipeline's own generator; the other kept the default: 128 random bits, 32 hex digits, unique
    assert sorted(r.record_id for r in keep["every"].records) == [f"{i:032x}" for i in range(1, 9)]
    defaults = [r.record_id for r in keep["never"].records]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in defaults) and len(set(defaults)) == 8


def test_knobs_set_after_start_take_effect_at_the_next_hand_off():
    keep = Keep()
    offers: list[int] = []
    tel = Telemetry(ledger=False, sinks=[keep])
    try:
        _queued_calls(tel, 3)  # the defaults: nothing set yet
        tel._pipeline.hold_s = 0.0
        tel._pipeline.yield_gil = lambda: offers.append(1)
        _queued_calls(tel, 4)
    finally:
        tel.shutdown()
    assert len(keep.records) == 7
    assert offers  # the running worker read the new attributes
