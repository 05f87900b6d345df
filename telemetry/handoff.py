"""A bounded hand-off between threads that costs the producer one deque append: no lock on the hot path
(`queue.Queue` takes a mutex per put and per get, and the two threads fight over it and the GIL)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    def __init__(self, maxsize: int, wake_at: int = 1) -> None:
        self._items: deque[T] = deque()
        self._event = threading.Event()
        self.maxsize = maxsize
        self._wake_at = max(1, wake_at)
        self._sleeping = False  # the consumer is in a long idle wait: the next put wakes it

    def put(self, item: T) -> bool:
        """False when full (the caller decides what full means); never blocks."""
        items = self._items
        if len(items) >= self.maxsize:
            return False
        items.append(item)
        if len(items) == self._wake_at or self._sleeping:
            self._sleeping = False
            self._event.set()
        return True

    def put_urgent(self, item: T) -> None:
        """Markers (flush, stop): never refused, always wake the consumer."""
        self._items.append(item)
        self._event.set()

    def wait(self, timeout: float | None) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def sleep(self, timeout: float | None) -> None:
        """An idle wait that the first `put` ends (one wake-up per idle spell, not per call)."""
        self._sleeping = True
        if not self._items:  # checked after the flag: a put racing with us either sees it or is seen here
            self._event.wait(timeout)
        self._sleeping = False
        self._event.clear()

    def drain(self) -> list[T]:
        items = self._items
        out = []
        while items:
            out.append(items.popleft())
        return out

    def __len__(self) -> int:
        return len(self._items)
