"""Periodic jobs: configurable schedules, one run per tick across workers, the watchdog, maintenance."""

from __future__ import annotations

import asyncio
import json
import time

import pandas as pd
import pytest
import redis as redis_sync
from arq.constants import default_queue_name, job_key_prefix

from harness import cron
from harness.batch import connect, enqueue_dataframe_async, job_id_for
from harness.config import load_settings
from harness.llm.cache import CachedAnswer
from harness.llm.service import LLMService
from harness.redis_store import RedisStore, events_key
from harness.worker import WorkerSettings

ONLY = {"HARNESS_CRON_MAINTENANCE": "off", "HARNESS_CRON_WATCHDOG": "off", "HARNESS_CRON_SUMMARY": "off"}


def cron_runs(port: int, job: str) -> list[dict]:
    r = redis_sync.Redis(port=port)
    return [e for e in (json.loads(x) for x in r.lrange(cron.RUNS_LOG_KEY, 0, -1)) if e["job"] == job]


def test_schedules_are_configurable_and_checked():
    assert cron.schedule("1s") == {"second": set(range(60))}
    assert cron.schedule("5m") == {"minute": set(range(0, 60, 5)), "second": 0}
    assert cron.schedule("2h") == {"hour": set(range(0, 24, 2)), "minute": 0, "second": 0}
    assert cron.schedule("off") is None and cron.period_s("15m") == 900
    for bad in ("7s", "every minute", "0h", "25h"):
        with pytest.raises(ValueError, match="cron schedule"):
            cron.schedule(bad)
    jobs = cron.cron_jobs(load_settings(cron_maintenance="off", cron_watchdog="10s", cron_summary="1m"))
    assert [j.name for j in jobs] == ["cron:watchdog", "cron:run_summary"]
    assert all(j.unique and j.keep_result_s and j.keep_result_s > 0 for j in jobs)


def test_worker_settings_list_every_job():
    names = {getattr(f, "name", getattr(f, "__name__", None)) for f in WorkerSettings.functions}
    assert {"moderate_content", "update_semantic_cache", "send_notification", "cache_maintenance", "watchdog",
            "run_summary"} <= names
    assert {j.name for j in WorkerSettings.cron_jobs} == {"cron:cache_maintenance", "cron:watchdog",
                                                          "cron:run_summary"}
    assert all(j.unique for j in WorkerSettings.cron_jobs)


async def test_a_periodic_job_runs_once_per_period_across_two_workers(redis_proc, worker_procs):
    env = {**ONLY, "HARNESS_CRON_SUMMARY": "1s"}
    worker_procs(redis_proc.url, env=env)
    worker_procs(redis_proc.url, env=env)
    deadline = time.monotonic() + 60
    while len(cron_runs(redis_proc.port, "run_summary")) < 6:
        assert time.monotonic() < deadline, "the summary job did not tick"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)  # both workers had every chance to run a tick twice
    runs = cron_runs(redis_proc.port, "run_summary")
    ticks = sorted(e["tick"] for e in runs)
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    assert all(b - a == 1000 for a, b in zip(ticks, ticks[1:], strict=False)), ticks  # one per second, none missed
    r = redis_sync.Redis(port=redis_proc.port)
    assert not r.hgetall(cron.DUPLICATES_KEY)  # Arq's unique job id already kept the workers apart
    assert len(r.smembers("harness:workers")) == 2


async def test_the_watchdog_re_enqueues_a_lost_job_and_reports_the_run(redis_proc, worker_procs, tmp_path):
    df = pd.DataFrame({"content_id": [f"w{i}" for i in range(6)], "text": [f"lovely weather {i}" for i in range(6)]})
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="lost", cache="off", progress=False)
    r = redis_sync.Redis(port=redis_proc.port)
    lost = job_id_for("lost", "w3")
    assert r.zrem(default_queue_name, lost) == 1 and r.delete(job_key_prefix + lost) == 1  # the job is gone
    env = {**ONLY, "HARNESS_CRON_WATCHDOG": "1s", "HARNESS_WATCHDOG_MIN_AGE": "0"}
    worker_procs(redis_proc.url, env=env)
    worker_procs(redis_proc.url, env=env)
    assert await handle.wait(60, poll_s=0.2), await handle.progress()
    verdicts = await handle.store.verdicts("lost")
    await handle.close()
    assert len(verdicts) == 6 and verdicts["w3"].outcome == "ok"
    deadline = time.monotonic() + 20
    while not any("lost" in e["result"]["stuck_runs"] for e in cron_runs(redis_proc.port, "watchdog")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    found = [e for e in cron_runs(redis_proc.port, "watchdog") if "lost" in e["result"]["stuck_runs"]]
    assert len(found) == 1 and found[0]["result"]["requeued"] == 1
    deadline = time.monotonic() + 20
    while True:
        sent = [json.loads(x) for x in r.lrange("harness:notifications:sent", 0, -1)]
        stuck = [s for s in sent if s["note"]["kind"] == "run_stuck"]
        if stuck or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(stuck) == 1 and stuck[0]["note"]["run_id"] == "lost"
    assert "re-enqueued 1" in stuck[0]["note"]["text"] and stuck[0]["note"]["data"]["lost"] == ["w3"]
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert "run lost is stuck" in logs


async def test_the_watchdog_leaves_young_runs_and_queued_jobs_alone(redis_proc):
    df = pd.DataFrame({"content_id": ["a", "b"], "text": ["x", "y"]})
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="young", cache="off", progress=False)
    await handle.close()
    pool = await connect(redis_proc.url)
    ctx = {"redis": pool, "store": RedisStore(pool), "settings": load_settings(watchdog_min_age_s=0),
           "job_id": "cron:watchdog:1700000000000"}
    try:
        found = await cron.find_lost_items(pool, "young")
        assert [c for c, _ in found["queued"]] == ["a", "b"] and not found["lost"]
        result = await cron.watchdog(ctx)
        assert result["stuck_runs"] == [] and result["requeued"] == 0
        assert await cron.watchdog(ctx) == {"skipped": "duplicate tick"}  # the same tick, once
        assert await pool.hget(cron.DUPLICATES_KEY, "watchdog") == b"1"
    finally:
        await pool.aclose()


async def test_cache_maintenance_expires_the_cache_and_trims_old_events(redis_proc, tmp_path):
    settings = load_settings(cache_dir=tmp_path / "cache", events_retention_s=3600)
    llm = LLMService(settings)
    llm.cache.set("keep", CachedAnswer(chunks=["y"], finish_reason="stop"))
    llm.cache.set("old", CachedAnswer(chunks=["x"], finish_reason="stop"), expire_s=0.3)
    df = pd.DataFrame({"content_id": ["a"], "text": ["x"]})
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="m", cache="off", progress=False)
    await handle.close()
    pool = await connect(redis_proc.url)
    old_ms = int((time.time() - 7200) * 1000)
    await pool.xadd(events_key("m"), {"e": "{}"}, id=f"{old_ms}-0")
    await pool.xadd(events_key("m"), {"e": "{}"})
    await pool.sadd("harness:runs", "gone")  # a run whose data expired
    await asyncio.sleep(0.5)
    ctx = {"redis": pool, "store": RedisStore(pool), "settings": settings, "llm": llm,
           "job_id": "cron:cache_maintenance:1700000000000"}
    try:
        result = await cron.cache_maintenance(ctx)
        assert result["expired"] == 1 and result["events_trimmed"] == 1 and result["runs_forgotten"] == 1
        assert await pool.xlen(events_key("m")) == 1
        assert llm.cache.get("keep") is not None and llm.cache.get("old") is None
        assert not await pool.sismember("harness:runs", "gone")
        assert cron_runs(redis_proc.port, "cache_maintenance")[0]["result"] == result
    finally:
        await pool.aclose()
        await llm.aclose()
