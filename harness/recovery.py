"""Fast re-run of jobs abandoned by a dead worker, without lowering `job_timeout`.

Arq marks a running job with an `arq:in-progress:<id>` key that expires only after
job_timeout + 10 s, so a job held by a SIGKILLed worker would wait five minutes. Each worker
here keeps a short-lived heartbeat key and the set of job ids it holds; any worker that sees a
peer's heartbeat gone deletes those in-progress keys, and the jobs, still in Arq's queue, are
picked up at the next poll. A re-run can never leave a second verdict (the store's HSETNX).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from typing import Any

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

log = logging.getLogger("harness.recovery")

WORKERS_KEY = "harness:workers"


def heartbeat_ttl_s() -> float:
    return float(os.environ.get("HARNESS_HEARTBEAT_TTL", "15"))


def _alive_key(worker_id: str) -> str:
    return f"harness:worker:{worker_id}"


def _jobs_key(worker_id: str) -> str:
    return f"harness:worker:{worker_id}:jobs"


async def on_job_start(ctx: dict[str, Any]) -> None:
    if "worker_id" in ctx:
        await ctx["redis"].sadd(_jobs_key(ctx["worker_id"]), ctx["job_id"])


async def after_job_end(ctx: dict[str, Any]) -> None:
    if "worker_id" in ctx:
        await ctx["redis"].srem(_jobs_key(ctx["worker_id"]), ctx["job_id"])


ORPHANS_KEY = "harness:orphans"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


LOCK_KEY = "harness:reclaim-lock"
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


async def reclaim_abandoned(redis: Redis) -> list[str]:
    """Release the jobs of workers whose heartbeat expired; returns the released job ids.

    One worker at a time does this (a short lock), so two workers never release the same
    job twice, which could delete the mark of a worker that has just picked it up again.
    """
    token = uuid.uuid4().hex
    if not await redis.set(LOCK_KEY, token, nx=True, px=int(heartbeat_ttl_s() * 1000)):
        return []
    try:
        released = await _release_dead_workers_jobs(redis)
        released += await _release_orphans(redis)
        return released
    finally:
        await redis.eval(_UNLOCK, 1, LOCK_KEY, token)


async def _release_orphans(redis: Redis) -> list[str]:
    """Release in-progress marks that no live worker has claimed for longer than a heartbeat.

    Arq marks a job in progress a moment before the job starts and our hook records who runs
    it; a worker killed in between leaves a mark nobody owns. Such a mark, seen unowned on two
    passes more than a heartbeat apart, is released.
    """
    marked = [_text(k)[len(in_progress_key_prefix):]  # moderation jobs only: cron marks are kept on purpose
              async for k in redis.scan_iter(match=in_progress_key_prefix + "moderate:*", count=1000)]
    owned: set[str] = set()
    for wid in [_text(w) for w in await redis.smembers(WORKERS_KEY)]:
        if await redis.exists(_alive_key(wid)):
            owned |= {_text(j) for j in await redis.smembers(_jobs_key(wid))}
    seen = {_text(k): float(v) for k, v in (await redis.hgetall(ORPHANS_KEY)).items()}
    now = time.time()
    unowned = [j for j in marked if j not in owned]
    stale = [j for j in unowned if j in seen and now - seen[j] > heartbeat_ttl_s()]
    fresh = {j: now for j in unowned if j not in seen}
    forget = [j for j in seen if j not in unowned or j in stale]
    if stale:
        await redis.delete(*(in_progress_key_prefix + j for j in stale))
        log.warning("released %d job(s) marked in progress by no live worker", len(stale))
    if fresh:
        await redis.hset(ORPHANS_KEY, mapping=fresh)
    if forget:
        await redis.hdel(ORPHANS_KEY, *forget)
    return stale


async def _release_dead_workers_jobs(redis: Redis) -> list[str]:
    released: list[str] = []
    for raw in await redis.smembers(WORKERS_KEY):
        wid = _text(raw)
        if await redis.exists(_alive_key(wid)):
            continue
        jobs = [_text(j) for j in await redis.smembers(_jobs_key(wid))]
        if jobs:
            await redis.delete(*(in_progress_key_prefix + j for j in jobs))
            released.extend(jobs)
            log.warning("worker %s stopped answering; released %d job(s) for re-run", wid, len(jobs))
        await redis.delete(_jobs_key(wid))
        await redis.srem(WORKERS_KEY, wid)
    return released


async def _beat(redis: Redis, worker_id: str, ttl: float) -> None:
    while True:
        with contextlib.suppress(Exception):  # a lost connection is the worker loop's business
            await redis.set(_alive_key(worker_id), "1", px=int(ttl * 1000))
            await redis.sadd(WORKERS_KEY, worker_id)
            await reclaim_abandoned(redis)
        await asyncio.sleep(ttl / 3)


async def start_heartbeat(ctx: dict[str, Any]) -> None:
    """Register this worker and keep its heartbeat (called from the worker's startup)."""
    ctx["worker_id"] = uuid.uuid4().hex[:12]
    redis: Redis = ctx["redis"]
    ttl = heartbeat_ttl_s()
    await redis.set(_alive_key(ctx["worker_id"]), "1", px=int(ttl * 1000))
    await redis.sadd(WORKERS_KEY, ctx["worker_id"])
    await reclaim_abandoned(redis)
    ctx["heartbeat_task"] = asyncio.create_task(_beat(redis, ctx["worker_id"], ttl))


async def stop_heartbeat(ctx: dict[str, Any]) -> None:
    task: asyncio.Task | None = ctx.pop("heartbeat_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if "worker_id" in ctx and "redis" in ctx:
        with contextlib.suppress(Exception):
            await ctx["redis"].delete(_alive_key(ctx["worker_id"]))
