"""Where a run's description, items and verdicts live while it runs.

Inline runs keep them in memory; worker runs keep them in Redis so every worker shares them.
Both satisfy the same `Store` protocol, which is all the task relies on.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
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
    async def verdicts(self, run_id: str) -> Mapping[str, Verdict]: ...


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


class SpillStore(MemoryStore):
    """The inline store for runs of any size: items and verdicts go to a temporary SQLite file.

    Keeping every verdict (raw model text, commentary) as Python objects costs about 4 KB an
    item; here memory stays flat as the dataset grows, and `verdicts()` reads lazily from disk.
    The file is deleted when the store and every mapping it handed out are gone.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        super().__init__()
        self._dir = Path(tempfile.mkdtemp(prefix="harness-run-", dir=directory))
        self._db = sqlite3.connect(self._dir / "run.sqlite3", isolation_level=None, check_same_thread=False)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE items (run_id TEXT, content_id TEXT, json TEXT, PRIMARY KEY (run_id, content_id));"
            "CREATE TABLE verdicts (run_id TEXT, content_id TEXT, json TEXT, PRIMARY KEY (run_id, content_id));")
        self._finalizer = weakref.finalize(self, _drop, self._db, self._dir)

    async def put_items(self, run_id: str, items: Iterable[Item]) -> int:
        rows = ((run_id, i.content_id, json.dumps(i.to_dict(), ensure_ascii=False)) for i in items)
        before = self._db.total_changes
        self._db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", rows)
        return self._db.total_changes - before

    async def get_item(self, run_id: str, content_id: str) -> Item | None:
        row = self._db.execute("SELECT json FROM items WHERE run_id = ? AND content_id = ?",
                               (run_id, content_id)).fetchone()
        return Item.from_dict(json.loads(row[0])) if row else None

    async def put_verdict(self, run_id: str, verdict: Verdict) -> bool:
        cur = self._db.execute("INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?)",
                               (run_id, verdict.content_id, verdict.to_json()))
        return cur.rowcount == 1

    async def get_verdict(self, run_id: str, content_id: str) -> Verdict | None:
        row = self._db.execute("SELECT json FROM verdicts WHERE run_id = ? AND content_id = ?",
                               (run_id, content_id)).fetchone()
        return Verdict.from_json(row[0]) if row else None

    async def verdicts(self, run_id: str) -> Mapping[str, Verdict]:  # type: ignore[override]
        return SpilledVerdicts(self, run_id)

    async def delete_run(self, run_id: str) -> None:
        await super().delete_run(run_id)
        for table in ("items", "verdicts"):
            self._db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))  # noqa: S608 - fixed names


class SpilledVerdicts(Mapping[str, Verdict]):
    """A read-only, lazily loaded view of one run's verdicts in a SpillStore."""

    def __init__(self, store: SpillStore, run_id: str) -> None:
        self._store = store  # keeps the file alive as long as the view
        self._run_id = run_id

    def __getitem__(self, content_id: str) -> Verdict:
        row = self._store._db.execute("SELECT json FROM verdicts WHERE run_id = ? AND content_id = ?",
                                      (self._run_id, content_id)).fetchone()
        if row is None:
            raise KeyError(content_id)
        return Verdict.from_json(row[0])

    def __iter__(self) -> Iterator[str]:
        cur = self._store._db.execute("SELECT content_id FROM verdicts WHERE run_id = ? ORDER BY rowid",
                                      (self._run_id,))
        return (row[0] for row in cur)

    def __len__(self) -> int:
        return int(self._store._db.execute("SELECT COUNT(*) FROM verdicts WHERE run_id = ?",
                                           (self._run_id,)).fetchone()[0])

    def __contains__(self, content_id: object) -> bool:
        return self._store._db.execute("SELECT 1 FROM verdicts WHERE run_id = ? AND content_id = ?",
                                       (self._run_id, content_id)).fetchone() is not None

    def __repr__(self) -> str:
        return f"<{len(self)} verdicts of run {self._run_id!r} on disk>"


def _drop(db: sqlite3.Connection, directory: Path) -> None:
    db.close()
    shutil.rmtree(directory, ignore_errors=True)
