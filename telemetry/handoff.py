"""A bounded hand-off between threads that costs the producer one deque append: no lock on the hot path
(`queue.Queue` takes a mutex per put and per get, and the two threads fight over it and the GIL)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class _Signal:
    """A wake-up flag that costs one C lock operation each side: `threading.Event.wait` runs a Python-level
    Condition (a new lock, a waiter list, two more lock round trips) on every wait, ~70 µs CPU per timed wait on
    this machine against ~40 µs here, and the pipeline waits ~200 times a second while calls arrive.

    The lock is held while no signal is pending: `set` releases it, `wait` acquires it (and so clears it)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        try:  # noqa: SIM105 - on the caller's path: a try costs nothing, contextlib.suppress a context manager
            self._lock.release()
        except RuntimeError:  # already set (also: two threads setting at once)
            pass

    def wait(self, timeout: float | None) -> bool:
        """True if set (and now cleared); False after `timeout` seconds."""
        return self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0))


class Handoff(Generic[T]):
    def __init__(self, maxsize: int, wake_at: int = 1) -> None:
        self._items: deque[T] = deque()
        self._event = _Signal()
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

    def wake(self) -> None:
        """End the consumer's current wait now (a poll or an idle sleep)."""
        self._event.set()

    def oldest(self) -> T | None:
        """The item waiting longest, or None when empty."""
        items = self._items
        return items[0] if items else None

    def sleep(self, timeout: float | None) -> None:
        """An idle wait that the first `put` ends (one wake-up per idle spell, not per call)."""
        self._sleeping = True
        if not self._items:  # checked after the flag: a put racing with us either sees it or is seen here
            self._event.wait(timeout)
        self._sleeping = False

    def drain(self) -> list[T]:
        items = self._items
        out = []
        while items:
            out.append(items.popleft())
        return out

    def __len__(self) -> int:
        return len(self._items)
