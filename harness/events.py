"""Events of a run, one shape everywhere: status, commentary (a text delta), result, error.

Inline runs publish to an in-memory bus; worker runs to a Redis Stream per run. A consumer
(a widget, `harness tail`, a web frontend) sees the same dicts either way.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

EventType = Literal["status", "commentary", "result", "error"]
EVENT_TYPES: tuple[str, ...] = ("status", "commentary", "result", "error")


@dataclass
class Event:
    type: EventType
    run_id: str
    content_id: str
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(d["type"], d["run_id"], d["content_id"], dict(d.get("data") or {}), float(d.get("ts") or 0))


class EventSink(Protocol):
    async def publish(self, event: Event) -> None: ...


Listener = Callable[[Event], None]


class MemoryEventBus:
    """In-process pub/sub with a bounded history per run, for inline runs and notebooks."""

    def __init__(self, history: int = 10_000):
        self._listeners: list[Listener] = []
        self._queues: list[tuple[str | None, asyncio.Queue[Event | None]]] = []
        self._history: dict[str, deque[Event]] = {}
        self._history_len = history

    async def publish(self, event: Event) -> None:
        if self._history_len:
            self._history.setdefault(event.run_id, deque(maxlen=self._history_len)).append(event)
        for listener in list(self._listeners):
            listener(event)
        for run_id, queue in list(self._queues):
            if run_id is None or run_id == event.run_id:
                queue.put_nowait(event)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every event; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def history(self, run_id: str) -> list[Event]:
        return list(self._history.get(run_id, ()))

    async def subscribe(self, run_id: str | None = None, *, from_start: bool = False) -> AsyncIterator[Event]:
        """Follow events as they come (optionally replaying the history first)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        entry = (run_id, queue)
        self._queues.append(entry)
        try:
            if from_start and run_id is not None:
                for event in self.history(run_id):
                    yield event
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.remove(entry)

    def close(self) -> None:
        for _, queue in self._queues:
            queue.put_nowait(None)
