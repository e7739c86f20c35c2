"""Worker mode against a real redis-server and real `harness worker` processes."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import time

import pandas as pd
import pytest
import redis as redis_sync
from arq.constants import default_queue_name, job_key_prefix, result_key_prefix
from conftest import ROOT

from harness.batch import enqueue_dataframe, enqueue_dataframe_async, open_run
from harness.config import load_settings
from harness.datasets import DatasetError, load_dataset
from harness.inline import run_inline
from harness.schema import bundled_prompt
from harness.worker import WorkerSettings

COMPARED = ("outcome", "flagged", "categories", "scores", "commentary", "rationale", "raw", "error",
            "truncated", "prompt_version", "model")


def mini(n: int | None = None) -> pd.DataFrame:
    df = load_dataset(ROOT / "datasets" / "mini_moderation.jsonl")
    return df if n is None else df.head(n)


def synthetic(n: int) -> pd.DataFrame:
    texts = ["I will hurt you", "lovely weather today", "kill the python process", "you people are vermin",
             "thinking of ending it all", "great match last night"]
    return load_dataset(pd.DataFrame({"content_id": [f"s{i:05d}" for i in range(n)],
                                      "text": [f"{texts[i % len(texts)]} #{i}" for i in range(n)]}))


async def wait_done(handle, timeout: float = 120) -> None:
    assert await handle.wait(timeout, poll_s=0.2), f"run not finished in {timeout}s: {await handle.progress()}"


def test_worker_settings_are_the_documented_ones():
    assert WorkerSettings.job_timeout == 300 and WorkerSettings.keep_result == 3600
    assert WorkerSettings.max_jobs > 10
    assert WorkerSettings.job_deserializer(WorkerSettings.job_serializer({"a": [1]})) == {"a": [1]}
    assert load_settings().llm_timeout_s * 2 < WorkerSettings.job_timeout


async def test_parity_inline_and_worker_give_equal_verdicts(redis_proc, worker_procs):
    df = mini(50)
    inline = await run_inline(df, bundled_prompt(), settings=load_settings(cache_mode="off"), progress=False)
    handle = await enqueue_dataframe_async(df, bundled_prompt(), redis_url=redis_proc.url, run_id="parity",
                                           cache="off", progress=False)
    worker_procs(redis_proc.url, "--burst")
    await wait_done(handle)
    collected = await handle.collect()
    verdicts = await handle.store.verdicts("parity")
    await handle.close()
    assert len(collected) == 50 and list(collected["content_id"]) == list(df["content_id"])
    for cid, v in inline.verdicts.items():
        w = verdicts[cid]
        for field in COMPARED:
            assert getattr(w, field) == getattr(v, field), (cid, field)
    inline_pred = inline.predictions()
    assert list(collected.columns) == list(inline_pred.columns)
    pd.testing.assert_frame_equal(collected.drop(columns=["latency_s", "run_id"]),
                                  inline_pred.drop(columns=["latency_s", "run_id"]))


async def test_two_workers_share_a_run_and_each_item_is_judged_once(redis_proc, worker_procs, llm_server):
    url = llm_server("--latency-ms", "20")
    df = synthetic(200)
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="shared", progress=False)
    env = {"OPENAI_BASE_URL": url}
    a = worker_procs(redis_proc.url, "--burst", "--max-jobs", "20", env=env)
    b = worker_procs(redis_proc.url, "--burst", "--max-jobs", "20", env=env)
    await wait_done(handle)
    verdicts = await handle.store.verdicts("shared")
    await handle.close()
    assert len(verdicts) == 200 and all(v.outcome == "ok" for v in verdicts.values())
    stats = json.loads(_get(url.removesuffix("/v1") + "/stats"))
    assert stats["requests"] == 200, stats  # no item was sent to the model twice
    assert a.wait(30) == 0 and b.wait(30) == 0


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - a local test server
        return r.read().decode()


async def test_sigkill_a_worker_mid_run_and_every_item_ends_with_one_verdict(redis_proc, worker_procs, llm_server):
    url = llm_server("--latency-ms", "150")
    df = synthetic(300)
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="killed", progress=False)
    env = {"OPENAI_BASE_URL": url}
    victim = worker_procs(redis_proc.url, "--max-jobs", "25", env=env)
    deadline = time.monotonic() + 60
    while (await handle.progress())["done"] < 60:
        assert time.monotonic() < deadline, "the first worker made no progress"
        await asyncio.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    in_flight = redis_sync.Redis(port=redis_proc.port).keys("arq:in-progress:*")
    assert in_flight, "the kill should leave jobs marked in progress"
    worker_procs(redis_proc.url, "--burst", "--max-jobs", "25", env=env)
    await wait_done(handle, timeout=120)
    verdicts = await handle.store.verdicts("killed")
    collected = await handle.collect()
    finals = [e.content_id async for e in handle.events(from_start=True) if e.type in ("result", "error")]
    await handle.close()
    assert sorted(finals) == sorted(verdicts)  # each verdict announced exactly once, kill or not
    assert len(verdicts) == 300 and len(collected) == 300
    assert collected["content_id"].is_unique
    assert (collected["outcome"] == "ok").all()
    assert max(v.tries for v in verdicts.values()) >= 2  # abandoned jobs were re-run


async def test_redis_restart_under_a_running_worker(redis_proc, worker_procs, llm_server, tmp_path):
    url = llm_server("--latency-ms", "100")
    df = synthetic(150)
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="restart", progress=False)
    await handle.close()
    worker = worker_procs(redis_proc.url, "--max-jobs", "10", env={"OPENAI_BASE_URL": url})
    deadline = time.monotonic() + 60
    probe = redis_sync.Redis(port=redis_proc.port)
    while probe.hlen("harness:verdicts:restart") < 20:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    redis_proc.stop()
    await asyncio.sleep(1.5)
    redis_proc.start()
    handle = await open_run("restart", redis_proc.url)
    await wait_done(handle, timeout=120)
    verdicts = await handle.store.verdicts("restart")
    await handle.close()
    assert len(verdicts) == 150 and all(v.outcome == "ok" for v in verdicts.values())
    assert worker.poll() is None, "the worker should have reconnected, not exited"
    log = (tmp_path / "worker-0.log").read_text()
    assert "lost Redis" in log and "reconnecting" in log


async def test_faults_end_in_verdicts_and_retries_show_as_events(redis_proc, worker_procs, llm_server):
    url = llm_server("--rate-429", "0.3", "--retry-after", "0.1", "--rate-500", "0.1", "--rate-cut", "0.1",
                     "--seed", "7")
    df = synthetic(60)
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="faults", progress=False)
    worker_procs(redis_proc.url, "--burst", env={"OPENAI_BASE_URL": url, "HARNESS_MAX_TRIES": "6"})
    await wait_done(handle)
    collected = await handle.collect()
    events = [e async for e in handle.events(from_start=True)]
    await handle.close()
    assert len(collected) == 60
    assert set(collected["outcome"]) <= {"ok", "error"}
    assert (collected["outcome"] == "ok").sum() >= 55
    retries = [e for e in events if e.type == "status" and e.data.get("state") == "retrying"]
    assert len(retries) >= 10
    assert {"status", "commentary", "result"} <= {e.type for e in events}
    assert collected.loc[collected["tries"] > 1].shape[0] >= 10


async def test_a_pickle_payload_is_not_executed(redis_proc, worker_procs, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    r = redis_sync.Redis(port=redis_proc.port)
    payload = pickle.dumps({"t": 1, "f": "moderate_content", "a": [Exploit()], "k": {}, "et": 0})
    r.set(job_key_prefix + "evil", payload)
    r.zadd(default_queue_name, {"evil": time.time() * 1000})
    handle = await enqueue_dataframe_async(mini(3), redis_url=redis_proc.url, run_id="after-evil", progress=False)
    worker = worker_procs(redis_proc.url, "--burst")
    assert worker.wait(60) == 0
    await wait_done(handle)
    await handle.close()
    assert not marker.exists()
    result = json.loads(r.get(result_key_prefix + "evil"))
    assert result["s"] is False and "deserializ" in str(result["r"]).lower()


async def test_resume_enqueues_only_items_without_a_verdict(redis_proc, worker_procs):
    df = mini(30)
    first = await enqueue_dataframe_async(df.head(10), redis_url=redis_proc.url, run_id="resume", progress=False)
    assert first.enqueued == 10
    worker_procs(redis_proc.url, "--burst")
    await wait_done(first)
    await first.close()
    second = await enqueue_dataframe_async(df.head(10), redis_url=redis_proc.url, run_id="resume", progress=False)
    assert (second.enqueued, second.skipped) == (0, 10)
    again = await enqueue_dataframe_async(df.head(10), redis_url=redis_proc.url, run_id="resume", progress=False)
    assert again.enqueued == 0
    await second.close()
    await again.close()


async def test_a_run_id_reused_for_another_prompt_is_refused(redis_proc):
    from dataclasses import replace

    await (await enqueue_dataframe_async(mini(2), redis_url=redis_proc.url, run_id="r1", progress=False)).close()
    other = replace(bundled_prompt(), temperature=0.5)
    with pytest.raises(ValueError, match="exists with prompt version"):
        await enqueue_dataframe_async(mini(2), other, redis_url=redis_proc.url, run_id="r1", progress=False)


async def test_bad_dataframes_fail_before_anything_is_written(redis_proc):
    r = redis_sync.Redis(port=redis_proc.port)
    dupes = pd.DataFrame({"content_id": ["a", "b", "a"], "text": ["x", "y", "z"]})
    with pytest.raises(DatasetError, match="'a'"):
        await enqueue_dataframe_async(dupes, redis_url=redis_proc.url, progress=False)
    bad_label = pd.DataFrame({"content_id": ["a"], "text": ["x"], "S": [7]})
    with pytest.raises(DatasetError, match="S"):
        await enqueue_dataframe_async(bad_label, redis_url=redis_proc.url, progress=False)
    no_text = pd.DataFrame({"content_id": ["a"], "body_text": ["x"]})
    with pytest.raises(DatasetError, match="text"):
        await enqueue_dataframe_async(no_text, redis_url=redis_proc.url, progress=False)
    assert r.dbsize() == 0


async def test_odd_but_valid_rows_are_accepted(redis_proc):
    df = pd.DataFrame({"content_id": [1, 2.0, "x"], "text": ["ok", None, "fine"], "S": [1, None, float("nan")]})
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="odd", progress=False)
    assert handle.enqueued == 3
    assert sorted(await handle.store.item_ids("odd")) == ["1", "2", "x"]
    await handle.close()


async def test_unreachable_redis_and_wrong_password_are_clear_errors(tmp_path):
    from conftest import RedisProcess, free_port

    with pytest.raises(ConnectionError, match=r"cannot use Redis at redis://127.0.0.1:\d+"):
        await enqueue_dataframe_async(mini(2), redis_url=f"redis://127.0.0.1:{free_port()}/0", progress=False)
    server = RedisProcess(tmp_path / "auth")
    server.start("--requirepass", "s3cret-pw")
    try:
        with pytest.raises(ConnectionError) as info:
            await enqueue_dataframe_async(mini(2), redis_url=f"redis://:wrong-pw@127.0.0.1:{server.port}/0",
                                          progress=False)
        assert "wrong-pw" not in str(info.value) and "***" in str(info.value)
        handle = await enqueue_dataframe_async(mini(2), redis_url=f"redis://:s3cret-pw@127.0.0.1:{server.port}/0",
                                               run_id="authed", progress=False)
        assert handle.enqueued == 2
        await handle.close()
    finally:
        server.stop()


def test_blocking_enqueue_and_collect(redis_proc, worker_procs):
    handle = enqueue_dataframe(mini(5), redis_url=redis_proc.url, run_id="blocking", progress=False)
    worker_procs(redis_proc.url, "--burst")
    assert handle.wait_sync(60, progress=False)
    df = handle.collect_sync()
    assert len(df) == 5 and (df["outcome"] == "ok").all()


async def test_an_item_whose_job_failed_without_a_verdict_is_re_enqueued_on_resume(redis_proc, worker_procs):
    """Arq blocks a job id while its result is kept; resume clears a failed result and retries."""
    df = mini(3)
    first = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="blocked", progress=False)
    await first.close()
    r = redis_sync.Redis(port=redis_proc.port)
    stuck = "moderate:blocked:" + df["content_id"].iloc[0]
    r.delete(job_key_prefix + stuck)
    r.zrem(default_queue_name, stuck)
    r.set(result_key_prefix + stuck, json.dumps({"s": False, "r": "job timed out", "t": 1}))
    worker_procs(redis_proc.url, "--burst").wait(60)
    handle = await open_run("blocked", redis_proc.url)
    pred = await handle.collect()
    await handle.close()
    assert pred.set_index("content_id").loc[df["content_id"].iloc[0], "error"].startswith("job failed on the worker")
    resumed = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="blocked", progress=False)
    assert (resumed.enqueued, resumed.skipped) == (1, 2)
    worker_procs(redis_proc.url, "--burst").wait(60)
    await wait_done(resumed)
    pred = await resumed.collect()
    await resumed.close()
    assert (pred["outcome"] == "ok").all()


async def test_a_hundred_thousand_rows_enqueue_and_resume(redis_proc):
    df = synthetic(100_000)
    handle = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="big", progress=False)
    assert handle.enqueued == 100_000
    r = redis_sync.Redis(port=redis_proc.port)
    assert r.zcard(default_queue_name) == 100_000 and r.hlen("harness:items:big") == 100_000
    again = await enqueue_dataframe_async(df, redis_url=redis_proc.url, run_id="big", progress=False)
    assert again.enqueued == 0 and r.zcard(default_queue_name) == 100_000
    await handle.close()
    await again.close()


def test_the_cli_flow_enqueue_worker_status_tail_collect(redis_proc, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "REDIS_URL": redis_proc.url, "HARNESS_CACHE_MODE": "off"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)

    data = ROOT / "datasets" / "mini_moderation.jsonl"
    enq = cli("enqueue", str(data), "--run-id", "cli-run", "--no-progress")
    assert enq.returncode == 0, enq.stderr
    assert "90 jobs enqueued" in enq.stdout
    pending = cli("status", "cli-run")
    assert pending.returncode == 3 and "0 with a verdict, 0 failed jobs, 90 pending; outcomes: none yet" in pending.stdout
    assert cli("worker", "--burst").returncode == 0
    status = cli("status", "cli-run")
    assert status.returncode == 0 and "90 with a verdict, 0 failed jobs, 0 pending; outcomes: ok 90" in status.stdout
    tail = cli("tail", "cli-run")
    assert tail.returncode == 0 and tail.stdout.count("result: outcome=ok") == 90
    assert "Commentary:" in tail.stdout
    out = tmp_path / "r.csv"
    collected = cli("collect", "cli-run", "--out", str(out))
    assert collected.returncode == 0, collected.stderr
    assert len(pd.read_csv(out)) == 90
    missing = cli("status", "no-such-run")
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr


async def test_a_verdict_and_its_final_event_are_written_together(redis_proc):
    from harness.events import Event
    from harness.redis_store import RedisEventStream, RedisStore
    from harness.schema import Verdict

    r = redis_sync.Redis(port=redis_proc.port)
    handle = await enqueue_dataframe_async(mini(1), redis_url=redis_proc.url, run_id="atomic", progress=False)
    store, stream = RedisStore(handle.redis), RedisEventStream(handle.redis)
    await stream.publish(Event("commentary", "atomic", "x", {"text": "thinking "}))
    first = Verdict("x", "ok", flagged=False)
    second = Verdict("x", "error", error="a late duplicate")
    assert await store.put_final("atomic", first, Event("result", "atomic", "x", {"v": 1}), stream)
    assert not await store.put_final("atomic", second, Event("error", "atomic", "x", {"v": 2}), stream)
    kinds = [json.loads(f[b"e"])["type"] for _, f in r.xrange("harness:events:atomic")]
    await handle.close()
    assert kinds == ["commentary", "result"]  # pending commentary first, one final event
    assert (await store.get_verdict("atomic", "x")).outcome == "ok"


def test_a_worker_with_a_wrong_password_stops_with_a_clear_message(tmp_path):
    import subprocess
    import sys

    from conftest import RedisProcess

    server = RedisProcess(tmp_path / "auth")
    server.start("--requirepass", "right-pw")
    try:
        env = {**os.environ, "REDIS_URL": f"redis://:wrong-pw@127.0.0.1:{server.port}/0"}
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "worker", "--burst"], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 2
    assert "cannot use Redis" in proc.stderr and "wrong-pw" not in proc.stderr
