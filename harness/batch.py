"""DataFrame -> Arq jobs, and jobs -> DataFrame.

`enqueue_dataframe` validates the whole frame before writing anything, stores the run and its
items in Redis, and enqueues one job per item that has no verdict yet, with the job id
`moderate:<run_id>:<content_id>`: enqueueing the same run again only resumes it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    default_queue_name,
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)
from arq.jobs import serialize_job
from tqdm.auto import tqdm

from harness.config import Settings
from harness.datasets import iter_items, load_dataset
from harness.events import Event
from harness.inline import resolve_run
from harness.redis_store import RedisEventStream, RedisStore
from harness.results import check_run_id, default_run_id, predictions_frame
from harness.schema import PromptSpec, Verdict
from harness.serialize import json_deserializer, json_serializer
from harness.sync import run_blocking

TASK_NAME = "moderate_content"


def job_id_for(run_id: str, content_id: str) -> str:
    return f"moderate:{run_id}:{content_id}"


def parse_redis_url(url: str) -> RedisSettings:
    try:
        return RedisSettings.from_dsn(url)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"REDIS_URL {url!r} is not a redis://, rediss:// or unix:// URL ({exc})") from exc


async def connect(redis_url: str | None = None, *, retries: int = 1) -> ArqRedis:
    """An Arq pool with the JSON serializer; a clear error when Redis is out of reach."""
    from harness.redis_server import resolve_redis_url

    url = resolve_redis_url(redis_url)
    settings = parse_redis_url(url)
    settings.conn_retries = retries
    try:
        pool = await create_pool(settings, job_serializer=json_serializer, job_deserializer=json_deserializer)
        await pool.ping()
        return pool
    except Exception as exc:  # noqa: BLE001 - redis raises many kinds; all mean the same here
        raise ConnectionError(f"cannot use Redis at {_redact(url)}: {type(exc).__name__}: {exc}") from exc


def _redact(url: str) -> str:
    """A URL fit for messages: any password replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@dataclass
class RunHandle:
    """A run on workers: progress, waiting, events and collecting verdicts into a DataFrame.

    Methods are coroutines; the `*_sync` twins block (and work in a notebook). The Redis
    connection is opened per event loop, so a handle made by a blocking call stays usable.
    """

    run_id: str
    redis_url: str
    queue_name: str = default_queue_name
    enqueued: int = 0
    skipped: int = 0
    _pool: ArqRedis | None = None
    _pool_loop: Any = None

    @property
    def redis(self) -> ArqRedis:
        if self._pool is None or self._pool_loop is not asyncio.get_running_loop():
            raise RuntimeError("call `await handle.connect()` first")
        return self._pool

    async def connect(self) -> RunHandle:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            self._pool = await connect(self.redis_url)
            self._pool_loop = loop
        return self

    @property
    def store(self) -> RedisStore:
        return RedisStore(self.redis)

    async def progress(self) -> dict[str, Any]:
        await self.connect()
        n_items, n_verdicts = await self.store.count(self.run_id)
        return {"run_id": self.run_id, "items": n_items, "done": n_verdicts, "pending": n_items - n_verdicts}

    async def wait(self, timeout: float | None = None, *, poll_s: float = 0.5, progress: bool = False) -> bool:
        """Wait until every item has a verdict or a failed job; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        try:
            while True:
                p = await self.progress()
                if progress:
                    bar = bar or tqdm(total=p["items"], desc=self.run_id, unit="item")
                    bar.n = p["done"]
                    bar.refresh()
                if p["pending"] == 0 or not await self._unfinished_ids():
                    return True
                if deadline is not None and time.monotonic() > deadline:
                    return False
                await asyncio.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()

    async def _unfinished_ids(self) -> list[str]:
        """Items with neither a verdict nor a failed Arq job."""
        await self.connect()
        store = self.store
        missing = sorted(set(await store.item_ids(self.run_id)) - await store.verdict_ids(self.run_id))
        failed = await self._failed_jobs(missing)
        return [cid for cid in missing if cid not in failed]

    async def _failed_jobs(self, content_ids: list[str]) -> dict[str, str]:
        """content_id -> reason, for jobs Arq finished without the task storing a verdict."""
        if not content_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in content_ids:
                pipe.get(result_key_prefix + job_id_for(self.run_id, cid))
            raws = await pipe.execute()
        out: dict[str, str] = {}
        for cid, raw in zip(content_ids, raws, strict=True):
            if raw:
                try:
                    res = json.loads(raw)
                    if not res.get("s"):
                        out[cid] = f"job failed on the worker: {res.get('r')}"
                except ValueError:
                    out[cid] = "job failed on the worker (unreadable result)"
        return out

    async def collect(self) -> pd.DataFrame:
        """Predictions with the inline runner's columns; unfinished items say so in `error`."""
        await self.connect()
        store = self.store
        run = await store.get_run(self.run_id)
        if run is None:
            raise KeyError(f"no run {self.run_id!r} in this Redis")
        spec = PromptSpec.from_dict(run["prompt"], name=run["prompt"].get("name", "prompt"))
        codes = spec.taxonomy.codes
        items_raw = await self.redis.hgetall(f"harness:items:{self.run_id}")
        rows = [json.loads(v) for v in items_raw.values()]
        rows.sort(key=lambda r: r.get("seq", 0))
        items = pd.DataFrame([{"content_id": r["content_id"], "content_type": r.get("content_type", "text"),
                               "text": r["text"], **{c: (r.get("labels") or {}).get(c) for c in codes}}
                              for r in rows], columns=["content_id", "content_type", "text", *codes])
        items = load_dataset(items, codes=codes)
        verdicts = await store.verdicts(self.run_id)
        missing = [cid for cid in items["content_id"] if cid not in verdicts]
        failed = await self._failed_jobs(missing)
        for cid in missing:
            verdicts[cid] = Verdict(cid, "error", error=failed.get(cid, "pending: no verdict yet"),
                                    run_id=self.run_id, prompt_version=run.get("prompt_version", ""),
                                    model=run.get("model", ""))
        return predictions_frame(items, verdicts, codes)

    async def events(self, *, from_start: bool = True, until_done: bool = True) -> AsyncIterator[Event]:
        """Follow the run's event stream (history first when from_start)."""
        await self.connect()
        stream = RedisEventStream(self.redis)

        async def done() -> bool:
            return until_done and not await self._unfinished_ids()

        async for _, event in stream.follow(self.run_id, from_id="0" if from_start else "$", stop_when=done):
            yield event

    async def close(self) -> None:
        if self._pool is not None and self._pool_loop is asyncio.get_running_loop():
            await self._pool.aclose()
        self._pool = None

    def progress_sync(self) -> dict[str, Any]:
        return run_blocking(self._once(self.progress()))

    def wait_sync(self, timeout: float | None = None, *, progress: bool = True) -> bool:
        return run_blocking(self._once(self.wait(timeout, progress=progress)))

    def collect_sync(self) -> pd.DataFrame:
        return run_blocking(self._once(self.collect()))

    async def _once(self, coro: Any) -> Any:
        try:
            return await coro
        finally:
            await self.close()


async def enqueue_dataframe_async(
    data: pd.DataFrame | str | Path,
    prompt: PromptSpec | str | Path | None = None,
    *,
    model: str | None = None,
    run_id: str | None = None,
    redis_url: str | None = None,
    cache: str | None = None,
    concurrency: int = 64,
    progress: bool = True,
    queue_name: str = default_queue_name,
    settings: Settings | None = None,
    sample_index: int = 0,
    semantic_cache: bool = False,
    semantic_threshold: float | None = None,
) -> RunHandle:
    """Write the run and its items to Redis and enqueue one job per item still without a verdict.

    `semantic_cache` lets near-duplicates reuse a verdict (see harness/semantic.py)."""
    settings, spec = resolve_run(prompt, model, settings, cache, semantic_threshold)
    items = load_dataset(data, codes=spec.taxonomy.codes)  # every check runs before any write
    if items.empty:
        raise ValueError("nothing to enqueue: the dataset has no rows")
    run_id = check_run_id(run_id) if run_id else default_run_id(spec, items)
    from harness.redis_server import resolve_redis_url

    redis_url = resolve_redis_url(redis_url)
    redis = await connect(redis_url)
    store = RedisStore(redis)
    existing = await store.get_run(run_id)
    if existing is not None and existing.get("prompt_version") != spec.version:
        await redis.aclose()
        raise ValueError(f"run {run_id!r} exists with prompt version {existing.get('prompt_version')}, "
                         f"not {spec.version}: pick another --run-id")
    await store.put_run(run_id, {
        "prompt": spec.to_dict(), "prompt_version": spec.version, "model": spec.model,
        "cache_mode": settings.cache_mode, "sample_index": sample_index,
        "dataset": str(items.attrs.get("source", "DataFrame")), "n_items": len(items),
        "endpoint": settings.endpoint, "created": (existing or {}).get("created", time.time()),
        "semantic_cache": bool(semantic_cache), "semantic_threshold": semantic_threshold,
        "queue_name": queue_name,
    })
    await store.put_items(run_id, iter_items(items), seq=True)
    done = await store.verdict_ids(run_id)
    todo = [(cid, ct) for cid, ct in zip(items["content_id"], items["content_type"], strict=True) if cid not in done]

    handle = RunHandle(run_id, redis_url, queue_name, skipped=len(items) - len(todo),
                       _pool=redis, _pool_loop=asyncio.get_running_loop())
    bar = tqdm(total=len(todo), desc=f"enqueue {run_id}", unit="job", disable=not progress)
    batches = [todo[i:i + BATCH] for i in range(0, len(todo), BATCH)]
    limiter = asyncio.Semaphore(max(1, concurrency))

    async def send(batch: list[tuple[str, str]]) -> None:
        async with limiter:
            added, refused = await _enqueue_batch(redis, run_id, batch, queue_name)
            for cid, ctype in refused:  # an id Arq still holds: queued, running, or a kept result
                if await _enqueue_one(redis, run_id, cid, ctype, queue_name):
                    added += 1
            handle.enqueued += added
            bar.update(len(batch))

    try:
        await asyncio.gather(*(send(b) for b in batches))
    finally:
        bar.close()
    return handle


BATCH = 500
# Arq's enqueue_job, batched: the same keys, payload and expiry, and the same rule that an id
# with a job or a kept result is not enqueued again; one round trip per BATCH jobs.
_ENQUEUE_SCRIPT = """
local refused = {}
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('EXISTS', KEYS[1] .. id, KEYS[2] .. id) == 0 then
    redis.call('PSETEX', KEYS[1] .. id, ARGV[2], ARGV[i + 2])
    redis.call('ZADD', ARGV[1], ARGV[i + 1], id)
  else
    table.insert(refused, id)
  end
end
return refused
"""


async def _enqueue_batch(redis: ArqRedis, run_id: str, batch: list[tuple[str, str]],
                         queue_name: str) -> tuple[int, list[tuple[str, str]]]:
    """Enqueue a batch atomically; returns (number added, pairs refused because their id is taken)."""
    now = int(time.time() * 1000)
    argv: list[Any] = [queue_name, expires_extra_ms]
    by_job: dict[str, tuple[str, str]] = {}
    for cid, ctype in batch:
        job_id = job_id_for(run_id, cid)
        by_job[job_id] = (cid, ctype)
        payload = serialize_job(TASK_NAME, (cid, ctype), {"run_id": run_id}, None, now, serializer=json_serializer)
        argv += [job_id, now, payload]
    refused = await redis.eval(_ENQUEUE_SCRIPT, 2, job_key_prefix, result_key_prefix, *argv)
    refused_ids = [r.decode() if isinstance(r, bytes) else r for r in refused]
    return len(batch) - len(refused_ids), [by_job[j] for j in refused_ids]


async def _enqueue_one(redis: ArqRedis, run_id: str, content_id: str, content_type: str, queue_name: str) -> bool:
    """Enqueue unless queued or running; a finished job without a verdict is cleared and re-run.

    Arq refuses a job id while its result is kept (keep_result), so a failed job's result is
    deleted first: the item gets a fresh try instead of staying blocked for an hour.
    """
    job_id = job_id_for(run_id, content_id)
    job = await redis.enqueue_job(TASK_NAME, content_id, content_type, run_id=run_id, _job_id=job_id,
                                  _queue_name=queue_name)
    if job is not None:
        return True
    queued, running = await asyncio.gather(redis.exists(job_key_prefix + job_id),
                                           redis.exists(in_progress_key_prefix + job_id))
    if queued or running:
        return False
    await redis.delete(result_key_prefix + job_id)
    job = await redis.enqueue_job(TASK_NAME, content_id, content_type, run_id=run_id, _job_id=job_id,
                                  _queue_name=queue_name)
    return job is not None


def enqueue_dataframe(*args: Any, **kwargs: Any) -> RunHandle:
    """Blocking twin of `enqueue_dataframe_async` (safe in a notebook)."""

    async def go() -> RunHandle:
        handle = await enqueue_dataframe_async(*args, **kwargs)
        await handle.close()
        return handle

    return run_blocking(go())


async def open_run(run_id: str, redis_url: str | None = None, queue_name: str = default_queue_name) -> RunHandle:
    from harness.redis_server import resolve_redis_url

    handle = await RunHandle(run_id, resolve_redis_url(redis_url), queue_name).connect()
    if await handle.store.get_run(run_id) is None:
        await handle.close()
        raise KeyError(f"no run {run_id!r} in this Redis")
    return handle
