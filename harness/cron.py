"""Periodic jobs on the workers, with Arq's `cron`: cache maintenance, a watchdog, run summaries.

Every worker schedules every job, and each tick still runs once: with `unique=True` (Arq's
default) a tick is enqueued under the job id `cron:<name>:<tick in ms>`, so the workers that
enqueue the same tick a moment apart collide on one id and only the first is queued, and one
worker runs it. Arq checks only the job and result keys, so `keep_result` is kept above zero
(a late enqueue after the job ran finds the result key), and `run_once` adds a Redis SET NX per
tick: a duplicate that slipped through anyway is skipped and counted in `harness:cron:duplicates`.
Each run is recorded in the list `harness:cron:runs` (job, tick, worker, result; the last 1000).

Schedules (env, read when the worker starts): `HARNESS_CRON_MAINTENANCE` (default `1h`),
`HARNESS_CRON_WATCHDOG` (`1m`), `HARNESS_CRON_SUMMARY` (`15m`); each is `<N>s`, `<N>m` or
`<N>h` where N divides 60 (24 for hours), or `off`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from arq.constants import (
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)
from arq.cron import CronJob, cron

from harness.config import Settings, parse_schedule
from harness.redis_store import (
    RUNS_KEY,
    STREAM_MAXLEN,
    events_key,
    items_key,
    run_key,
    verdicts_key,
)

log = logging.getLogger("harness.cron")

RUNS_LOG_KEY = "harness:cron:runs"
DUPLICATES_KEY = "harness:cron:duplicates"
SUMMARY_STATE_KEY = "harness:cron:summary"
KEEP = 1000


def schedule(spec: str) -> dict[str, Any] | None:
    """'30s' / '5m' / '1h' / 'off' as `arq.cron.cron` keyword arguments (None: not scheduled)."""
    parsed = parse_schedule(spec)
    if parsed is None:
        return None
    n, unit = parsed
    if unit == "s":
        return {"second": set(range(0, 60, n))}
    if unit == "m":
        return {"minute": set(range(0, 60, n)), "second": 0}
    return {"hour": set(range(0, 24, n)), "minute": 0, "second": 0}


def period_s(spec: str) -> float | None:
    """The schedule's period in seconds (None when off)."""
    parsed = parse_schedule(spec)
    return None if parsed is None else parsed[0] * {"s": 1, "m": 60, "h": 3600}[parsed[1]]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """The three periodic jobs with their configured schedules; unique across workers."""
    jobs = []
    for coroutine, spec in ((cache_maintenance, settings.cron_maintenance), (watchdog, settings.cron_watchdog),
                            (run_summary, settings.cron_summary)):
        kwargs = schedule(spec)
        if kwargs is not None:
            period = period_s(spec) or 60
            jobs.append(cron(coroutine, unique=True, timeout=max(60.0, min(600.0, period * 5)),
                             keep_result=max(60.0, period * 2), max_tries=1, **kwargs))
    return jobs


def _tick(ctx: dict[str, Any]) -> str:
    job_id = str(ctx.get("job_id") or "")
    m = re.search(r":(\d{10,})$", job_id)
    return m.group(1) if m else str(int(time.time() * 1000))


async def run_once(ctx: dict[str, Any], name: str) -> bool:
    """True for the first run of this job at this tick; a duplicate is counted and skipped."""
    redis = ctx["redis"]
    first = await redis.set(f"harness:cron:lock:{name}:{_tick(ctx)}", ctx.get("worker_id", "?"), nx=True, ex=3600)
    if not first:
        await redis.hincrby(DUPLICATES_KEY, name, 1)
        log.warning("cron %s tick %s already ran on another worker; skipped", name, _tick(ctx))
    return bool(first)


async def _record(ctx: dict[str, Any], name: str, result: dict[str, Any]) -> None:
    entry = {"job": name, "tick": int(_tick(ctx)), "worker": ctx.get("worker_id", ""), "ts": time.time(),
             "result": result}
    async with ctx["redis"].pipeline(transaction=True) as pipe:
        pipe.lpush(RUNS_LOG_KEY, json.dumps(entry, default=str))
        pipe.ltrim(RUNS_LOG_KEY, 0, KEEP - 1)
        await pipe.execute()
    log.info("cron %s: %s", name, result)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _run_ids(redis: Any) -> list[str]:
    return sorted(_s(r) for r in await redis.smembers(RUNS_KEY))


# ---- the jobs --------------------------------------------------------------------------------
async def cache_maintenance(ctx: dict[str, Any]) -> dict[str, Any]:
    """Expire and cull the response cache; trim event streams; forget runs that expired."""
    if not await run_once(ctx, "cache_maintenance"):
        return {"skipped": "duplicate tick"}
    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    result: dict[str, Any] = {"expired": 0, "culled": 0, "events_trimmed": 0, "runs_forgotten": 0}
    llm = ctx.get("llm")
    if llm is not None:
        cache = llm.cache
        result["expired"] = await asyncio.to_thread(cache.expire)
        result["culled"] = await asyncio.to_thread(cache.cull)
    min_id = f"{int((time.time() - settings.events_retention_s) * 1000)}-0"
    for run_id in await _run_ids(redis):
        if not await redis.exists(run_key(run_id)):  # the run expired (store ttl) or was deleted
            await redis.delete(events_key(run_id), items_key(run_id), verdicts_key(run_id))
            await redis.srem(RUNS_KEY, run_id)
            result["runs_forgotten"] += 1
            continue
        key = events_key(run_id)
        if await redis.exists(key):
            trimmed = await redis.xtrim(key, minid=min_id, approximate=False)
            trimmed += await redis.xtrim(key, maxlen=STREAM_MAXLEN, approximate=True)
            result["events_trimmed"] += int(trimmed)
    for key in ("harness:notifications:sent", "harness:notifications:failed", RUNS_LOG_KEY):
        await redis.ltrim(key, 0, KEEP - 1)
    await _record(ctx, "cache_maintenance", result)
    return result


async def find_lost_items(redis: Any, run_id: str) -> dict[str, list[tuple[str, str]]]:
    """Items of a run with no verdict, by what Arq knows of their job: queued, running, failed, lost."""
    from harness.batch import job_id_for

    item_ids = {_s(k) for k in await redis.hkeys(items_key(run_id))}
    done = {_s(k) for k in await redis.hkeys(verdicts_key(run_id))}
    missing = sorted(item_ids - done)
    out: dict[str, list[tuple[str, str]]] = {"queued": [], "running": [], "failed": [], "lost": []}
    for start in range(0, len(missing), 1000):
        chunk = missing[start:start + 1000]
        async with redis.pipeline(transaction=False) as pipe:
            for cid in chunk:
                job_id = job_id_for(run_id, cid)
                pipe.exists(job_key_prefix + job_id)
                pipe.exists(in_progress_key_prefix + job_id)
                pipe.get(result_key_prefix + job_id)
                pipe.hget(items_key(run_id), cid)
            raw = await pipe.execute()
        for i, cid in enumerate(chunk):
            queued, running, result, item = raw[4 * i: 4 * i + 4]
            ctype = json.loads(item).get("content_type", "text") if item else "text"
            if running:
                out["running"].append((cid, ctype))
            elif queued:
                out["queued"].append((cid, ctype))
            elif result:
                out["failed"].append((cid, ctype))
            else:
                out["lost"].append((cid, ctype))
    # a job may have finished between the two looks: its verdict now exists, nothing is stuck
    for kind in ("failed", "lost"):
        if out[kind]:
            now_done = await redis.hmget(verdicts_key(run_id), [cid for cid, _ in out[kind]])
            out[kind] = [pair for pair, v in zip(out[kind], now_done, strict=True) if v is None]
    return out


async def watchdog(ctx: dict[str, Any]) -> dict[str, Any]:
    """Find items without a verdict whose job is neither queued nor running; re-enqueue, report.

    A lost job (no job key, no in-progress key, no result) and a failed one (a kept result, no
    verdict) are enqueued again the way `harness enqueue` resumes a run, at most
    `HARNESS_WATCHDOG_MAX_REQUEUES` times per item; then they are only reported. Runs younger
    than `HARNESS_WATCHDOG_MIN_AGE` seconds are left alone (they may still be enqueueing).
    Each stuck run gets a "run stuck" notification.
    """
    if not await run_once(ctx, "watchdog"):
        return {"skipped": "duplicate tick"}
    from harness.batch import _enqueue_one
    from harness.notify import make_note, notify

    settings: Settings = ctx["settings"]
    redis = ctx["redis"]
    store = ctx["store"]
    result: dict[str, Any] = {"runs_checked": 0, "stuck_runs": [], "requeued": 0, "given_up": 0}
    now = time.time()
    for run_id in await _run_ids(redis):
        run = await store.get_run(run_id)
        if run is None or now - float(run.get("created") or 0) < settings.watchdog_min_age_s:
            continue
        n_items, n_verdicts = await store.count(run_id)
        if n_verdicts >= n_items:
            continue
        result["runs_checked"] += 1
        found = await find_lost_items(redis, run_id)
        stuck = found["lost"] + found["failed"]
        if not stuck:
            continue
        counts_key = f"harness:watchdog:requeues:{run_id}"
        requeued, given_up = [], []
        for cid, ctype in stuck:
            tries = int(await redis.hincrby(counts_key, cid, 1))
            if tries > settings.watchdog_max_requeues:
                given_up.append(cid)
                continue
            if await _enqueue_one(redis, run_id, cid, ctype, run.get("queue_name") or default_queue_name):
                requeued.append(cid)
        await redis.expire(counts_key, 30 * 86400)
        result["requeued"] += len(requeued)
        result["given_up"] += len(given_up)
        result["stuck_runs"].append(run_id)
        text = (f"harness: run {run_id} is stuck: {len(stuck)} item(s) without a verdict and without a queued "
                f"or running job ({len(found['lost'])} lost, {len(found['failed'])} failed); "
                f"re-enqueued {len(requeued)}, gave up on {len(given_up)}")
        log.warning(text)
        await notify(ctx, make_note("run_stuck", text, run_id=run_id, note_id=f"run_stuck:{run_id}:{_tick(ctx)}",
                                    lost=[c for c, _ in found["lost"]][:50],
                                    failed=[c for c, _ in found["failed"]][:50],
                                    requeued=requeued[:50], given_up=given_up[:50]))
    await _record(ctx, "watchdog", result)
    return result


async def run_summary(ctx: dict[str, Any]) -> dict[str, Any]:
    """A progress summary notification for every run whose verdict count changed since the last one."""
    if not await run_once(ctx, "run_summary"):
        return {"skipped": "duplicate tick"}
    from harness.notify import make_note, notify, summarize, summary_text

    redis = ctx["redis"]
    store = ctx["store"]
    result: dict[str, Any] = {"runs": 0, "summarized": []}
    for run_id in await _run_ids(redis):
        run = await store.get_run(run_id)
        if run is None:
            continue
        result["runs"] += 1
        n_items, n_verdicts = await store.count(run_id)
        state = f"{n_items}:{n_verdicts}"
        last = await redis.hget(SUMMARY_STATE_KEY, run_id)
        if last is not None and _s(last) == state:
            continue
        await redis.hset(SUMMARY_STATE_KEY, run_id, state)
        s = summarize(await store.verdicts(run_id), n_items)
        prefix = "summary" if n_verdicts < n_items else "summary (finished)"
        await notify(ctx, make_note("run_summary", summary_text(run_id, s, prefix), run_id=run_id,
                                    note_id=f"run_summary:{run_id}:{_tick(ctx)}", summary=s))
        result["summarized"].append(run_id)
    await _record(ctx, "run_summary", result)
    return result
