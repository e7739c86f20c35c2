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


async def reclaim_abandoned(redis: Redis) -> list[str]:
    """Release the jobs of workers whose heartbeat expired; returns the released job ids."""
    released: list[str] = []
    for raw in await redis.smembers(WORKERS_KEY):
        wid = raw.decode() if isinstance(raw, bytes) else raw
        if await redis.exists(_alive_key(wid)):
            continue
        jobs = [j.decode() if isinstance(j, bytes) else j for j in await redis.smembers(_jobs_key(wid))]
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
