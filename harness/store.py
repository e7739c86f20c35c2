"""Where a run's description, items and verdicts live while it runs.

Inline runs keep them in memory; worker runs keep them in Redis so every worker shares them.
Both satisfy the same `Store` protocol, which is all the task relies on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from harness.events import Event, EventSink
from harness.schema import Item, Verdict


class Store(Protocol):
    async def put_run(self, run_id: str, meta: dict[str, Any]) -> None: ...
    async def get_run(self, run_id: str) -> dict[str, Any] | None: ...
    async def put_items(self, run_id: str, items: Iterable[Item]) -> int: ...
    async def get_item(self, run_id: str, content_id: str) -> Item | None: ...
    async def put_verdict(self, run_id: str, verdict: Verdict) -> bool: ...
    async def put_final(self, run_id: str, verdict: Verdict, event: Event, events: EventSink) -> bool: ...
    async def get_verdict(self, run_id: str, content_id: str) -> Verdict | None: ...
    async def verdicts(self, run_id: str) -> dict[str, Verdict]: ...


class MemoryStore:
    """A dict-backed store for one process. `put_verdict` keeps the first verdict written."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._items: dict[str, dict[str, Item]] = {}
        self._verdicts: dict[str, dict[str, Verdict]] = {}

    async def put_run(self, run_id: str, meta: dict[str, Any]) -> None:
        self._runs[run_id] = dict(meta)

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._runs.get(run_id)

    async def put_items(self, run_id: str, items: Iterable[Item]) -> int:
        bucket = self._items.setdefault(run_id, {})
        n = 0
        for item in items:
            bucket[item.content_id] = item
            n += 1
        return n

    async def get_item(self, run_id: str, content_id: str) -> Item | None:
        return self._items.get(run_id, {}).get(content_id)

    async def put_verdict(self, run_id: str, verdict: Verdict) -> bool:
        """Store a verdict unless one exists; True when this call stored it."""
        bucket = self._verdicts.setdefault(run_id, {})
        if verdict.content_id in bucket:
            return False
        bucket[verdict.content_id] = verdict
        return True

    async def put_final(self, run_id: str, verdict: Verdict, event: Event, events: EventSink) -> bool:
        """Store the verdict and, if it is the one that stands, publish its final event."""
        stored = await self.put_verdict(run_id, verdict)
        if stored:
            await events.publish(event)
        return stored

    async def get_verdict(self, run_id: str, content_id: str) -> Verdict | None:
        return self._verdicts.get(run_id, {}).get(content_id)

    async def verdicts(self, run_id: str) -> dict[str, Verdict]:
        return dict(self._verdicts.get(run_id, {}))

    async def delete_run(self, run_id: str) -> None:
        for d in (self._runs, self._items, self._verdicts):
            d.pop(run_id, None)
