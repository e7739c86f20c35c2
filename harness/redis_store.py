"""The shared store and event stream of worker runs, in Redis.

Runs, items and verdicts are plain keys under `harness:`, separate from Arq's own job keys,
so they outlive `keep_result`. A verdict is written with HSETNX: the first one stands, so a
job re-run after a worker died can never leave two. Events go to one bounded stream per run.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from redis.asyncio import Redis

from harness.events import Event
from harness.schema import Item, Verdict

PREFIX = "harness"
STREAM_MAXLEN = 50_000


def run_key(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def items_key(run_id: str) -> str:
    return f"{PREFIX}:items:{run_id}"


def verdicts_key(run_id: str) -> str:
    return f"{PREFIX}:verdicts:{run_id}"


def events_key(run_id: str) -> str:
    return f"{PREFIX}:events:{run_id}"


RUNS_KEY = f"{PREFIX}:runs"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


_FINAL_SCRIPT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
  return 1
end
return 0
"""


class RedisStore:
    """Store protocol on Redis; `ttl_s` None keeps a run until `delete_run`."""

    def __init__(self, redis: Redis, ttl_s: int | None = None):
        self.redis = redis
        self.ttl_s = ttl_s

    async def put_run(self, run_id: str, meta: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(run_key(run_id), _dumps(meta), ex=self.ttl_s)
            pipe.sadd(RUNS_KEY, run_id)
            await pipe.execute()

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(run_key(run_id))
        return json.loads(raw) if raw else None

    async def put_items(self, run_id: str, items: Iterable[Item], batch: int = 1000, *, seq: bool = False) -> int:
        """Write items in pipelined batches; `seq` records their order for collecting."""
        n = 0
        chunk: dict[str, str] = {}
        for i, item in enumerate(items):
            chunk[item.content_id] = _dumps({**item.to_dict(), "seq": i} if seq else item.to_dict())
            if len(chunk) >= batch:
                n += await self._hset_many(items_key(run_id), chunk)
                chunk = {}
        if chunk:
            n += await self._hset_many(items_key(run_id), chunk)
        return n

    async def _hset_many(self, key: str, mapping: dict[str, str]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=mapping)
            if self.ttl_s:
                pipe.expire(key, self.ttl_s)
            await pipe.execute()
        return len(mapping)

    async def get_item(self, run_id: str, content_id: str) -> Item | None:
        raw = await self.redis.hget(items_key(run_id), content_id)
        return Item.from_dict(json.loads(raw)) if raw else None

    async def item_ids(self, run_id: str) -> list[str]:
        return [k.decode() if isinstance(k, bytes) else k for k in await self.redis.hkeys(items_key(run_id))]

    async def put_verdict(self, run_id: str, verdict: Verdict) -> bool:
        stored = bool(await self.redis.hsetnx(verdicts_key(run_id), verdict.content_id, verdict.to_json()))
        if stored and self.ttl_s:
            await self.redis.expire(verdicts_key(run_id), self.ttl_s)
        return stored

    async def put_final(self, run_id: str, verdict: Verdict, event: Event, events: Any) -> bool:
        """Store the verdict and append its final event in one atomic step.

        Done apart, a worker dying between the two would leave a verdict that no event
        announces, and the re-run, finding the verdict, would announce nothing either.
        """
        if isinstance(events, RedisEventStream):
            await events.flush(run_id, verdict.content_id)
            maxlen = events.maxlen
        else:
            maxlen = STREAM_MAXLEN
        stored = bool(await self.redis.eval(_FINAL_SCRIPT, 2, verdicts_key(run_id), events_key(run_id),
                                            verdict.content_id, verdict.to_json(), maxlen,
                                            _dumps(event.to_dict())))
        if stored and self.ttl_s:
            await self.redis.expire(verdicts_key(run_id), self.ttl_s)
        return stored

    async def get_verdict(self, run_id: str, content_id: str) -> Verdict | None:
        raw = await self.redis.hget(verdicts_key(run_id), content_id)
        return Verdict.from_json(raw) if raw else None

    async def verdicts(self, run_id: str) -> dict[str, Verdict]:
        out: dict[str, Verdict] = {}
        async for key, raw in self.redis.hscan_iter(verdicts_key(run_id), count=1000):
            cid = key.decode() if isinstance(key, bytes) else key
            out[cid] = Verdict.from_json(raw)
        return out

    async def verdict_ids(self, run_id: str) -> set[str]:
        return {k.decode() if isinstance(k, bytes) else k for k in await self.redis.hkeys(verdicts_key(run_id))}

    async def count(self, run_id: str) -> tuple[int, int]:
        """(items, verdicts) of a run."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(items_key(run_id))
            pipe.hlen(verdicts_key(run_id))
            n_items, n_verdicts = await pipe.execute()
        return int(n_items), int(n_verdicts)

    async def delete_run(self, run_id: str) -> None:
        await self.redis.delete(run_key(run_id), items_key(run_id), verdicts_key(run_id), events_key(run_id))
        await self.redis.srem(RUNS_KEY, run_id)


class RedisEventStream:
    """Events of a run on a Redis Stream, capped at about STREAM_MAXLEN entries.

    Commentary deltas of one item are merged for up to `merge_s` before they are written, so a
    replayed cache hit costs one stream entry instead of one per chunk; any other event of the
    item writes the pending text first, so the stream keeps the order the task emitted.
    """

    def __init__(self, redis: Redis, maxlen: int = STREAM_MAXLEN, merge_s: float = 0.05):
        self.redis = redis
        self.maxlen = maxlen
        self.merge_s = merge_s
        self._pending: dict[tuple[str, str], tuple[float, list[str]]] = {}

    async def publish(self, event: Event) -> None:
        key = (event.run_id, event.content_id)
        if event.type == "commentary":
            started, texts = self._pending.setdefault(key, (time.monotonic(), []))
            texts.append(str(event.data.get("text", "")))
            if time.monotonic() - started >= self.merge_s:
                await self._flush(key)
            return
        await self._flush(key)
        await self._add(event)

    async def flush(self, run_id: str, content_id: str) -> None:
        """Write an item's pending commentary now (before its final event)."""
        await self._flush((run_id, content_id))

    async def _flush(self, key: tuple[str, str]) -> None:
        pending = self._pending.pop(key, None)
        if pending:
            await self._add(Event("commentary", key[0], key[1], {"text": "".join(pending[1])}))

    async def _add(self, event: Event) -> None:
        await self.redis.xadd(events_key(event.run_id), {"e": _dumps(event.to_dict())},
                              maxlen=self.maxlen, approximate=True)

    async def follow(self, run_id: str, *, from_id: str = "0", block_ms: int = 1000,
                     stop_when: Any = None) -> AsyncIterator[tuple[str, Event]]:
        """Yield (stream id, event) from `from_id` on ("0" = the whole history, "$" = only new).

        Stops when `stop_when()` (an async callable) returns True and the stream is drained.
        """
        last = from_id
        if last == "$":
            info = await self.redis.xrevrange(events_key(run_id), count=1)
            last = info[0][0].decode() if info else "0"
        while True:
            batch = await self.redis.xread({events_key(run_id): last}, count=500, block=block_ms)
            if batch:
                for entry_id, fields in batch[0][1]:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    raw = fields.get(b"e") or fields.get("e")
                    yield last, Event.from_dict(json.loads(raw))
            elif stop_when is not None and await stop_when():
                return
