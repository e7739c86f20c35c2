"""`make bench`: throughput, enqueue rate, cache and memory figures, each as a ratio to a
baseline measured in the same run on the same machine (absolute times drift between machines).

Everything runs locally: a `harness serve-llm` process with a fixed latency stands in for the
model, and a redis-server on a free port with its own data dir stands in for Redis.
Writes bench/results.json and bench/results.md and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import load_settings  # noqa: E402
from harness.datasets import load_dataset  # noqa: E402
from harness.inline import run_inline  # noqa: E402
from harness.localproc import free_port, wait_for_port  # noqa: E402
from harness.schema import Item, bundled_prompt  # noqa: E402

REAL = ROOT.parent / "shared" / "datasets" / "openai-moderation" / "samples-1680.jsonl.gz"
TEXTS = ["I will hurt you if you come back here", "lovely weather for a walk today", "how do I kill a python process",
         "those people are vermin and should leave", "thinking about ending it all tonight", "great match last night",
         "send me pics, you are only 14 right", "the crash left blood everywhere", "nobody likes you, loser",
         "recipe: two eggs and a cup of flour"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def llm_server(*flags: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.llm.server", "--port", str(port), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


@contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(directory), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def synthetic(n: int, distinct: int | None = None) -> pd.DataFrame:
    distinct = distinct or n
    return load_dataset(pd.DataFrame({
        "content_id": [f"b{i:06d}" for i in range(n)],
        "text": [f"{TEXTS[i % len(TEXTS)]} #{i % distinct}" for i in range(n)],
    }))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- 1. inline vs the bare client ---------------------------------------------------------------
async def bare_client(url: str, items: pd.DataFrame, concurrency: int) -> float:
    """The ceiling: the same streamed requests with nothing around them."""
    spec = bundled_prompt()
    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0, timeout=60)
    messages = [spec.render_messages(Item(cid, text))[0] for cid, text in zip(items["content_id"], items["text"],
                                                                              strict=True)]
    todo = iter(messages)

    async def worker() -> None:
        for m in todo:
            stream = await client.chat.completions.create(model="bench", messages=m, stream=True,  # type: ignore[arg-type]
                                                          stream_options={"include_usage": True}, **spec.sampling())
            async for _ in stream:
                pass

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    return len(items) / elapsed


async def harness_inline(url: str, items: pd.DataFrame, concurrency: int) -> float:
    settings = load_settings(base_url=url, cache_mode="off", model="bench")
    result = await run_inline(items, settings=settings, concurrency=concurrency, progress=False)
    assert result.outcomes()["ok"] == len(items), result.outcomes()
    return len(items) / result.elapsed_s


def bench_inline(n: int, concurrencies: list[int], latency_ms: float) -> dict[str, Any]:
    items = synthetic(n)
    out: dict[str, Any] = {"n": n, "latency_ms": latency_ms, "by_concurrency": {}}
    with llm_server("--latency-ms", str(latency_ms)) as url:
        asyncio.run(bare_client(url, items.head(50), 8))  # warm up the server
        for c in concurrencies:
            bare = asyncio.run(bare_client(url, items, c))
            ours = asyncio.run(harness_inline(url, items, c))
            limit = c / (latency_ms / 1000)
            out["by_concurrency"][str(c)] = {
                "harness_items_per_s": round(ours, 1), "bare_client_items_per_s": round(bare, 1),
                "littles_law_limit": round(limit, 1), "ratio_to_bare_client": round(ours / bare, 3),
                "ratio_to_limit": round(ours / limit, 3), "bare_ratio_to_limit": round(bare / limit, 3)}
            log(f"inline C={c}: harness {ours:.0f}/s, bare client {bare:.0f}/s, limit {limit:.0f}/s")
    return out


# ---- 2. workers vs raw Arq ----------------------------------------------------------------------
def job_span_items_per_s(redis_url: str, prefix: str) -> float:
    """Items per second between the first job start and the last job end, from Arq's results."""
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url)
    starts, ends = [], []
    for key in r.scan_iter(match=f"arq:result:{prefix}*", count=1000):
        res = json.loads(r.get(key))
        starts.append(res["st"])
        ends.append(res["ft"])
    return len(starts) / ((max(ends) - min(starts)) / 1000)


def run_workers(cmd: list[str], env: dict[str, str], n_workers: int) -> None:
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n_workers)]
    for p in procs:
        if p.wait(600) != 0:
            raise RuntimeError(f"worker {cmd} exited with {p.returncode}")


def bench_workers(n: int, workers: list[int], tmp: Path) -> dict[str, Any]:
    import redis as redis_sync

    from harness.batch import enqueue_dataframe_async

    items = synthetic(n)
    cache_dir = tmp / "worker-cache"
    settings = load_settings(cache_dir=cache_dir, cache_mode="use")
    asyncio.run(run_inline(items, settings=settings, progress=False, concurrency=32))  # every call a hit below
    out: dict[str, Any] = {"n": n, "by_workers": {}}
    with redis_server(tmp / "redis-workers") as url:
        env = {**os.environ, "REDIS_URL": url, "HARNESS_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
        for w in workers:
            redis_sync.Redis.from_url(url).flushdb()

            async def enqueue_raw() -> None:
                from harness.batch import connect

                pool = await connect(url)
                for cid in items["content_id"]:
                    await pool.enqueue_job("noop", cid, "text", run_id="raw", _job_id=f"raw:{cid}")
                await pool.aclose()

            asyncio.run(enqueue_raw())
            run_workers([sys.executable, "-m", "arq", "bench.raw_arq.WorkerSettings", "--burst"], env, w)
            raw = job_span_items_per_s(url, "raw:")
            handle = asyncio.run(enqueue_dataframe_async(items, redis_url=url, run_id=f"w{w}", progress=False))
            run_workers([sys.executable, "-m", "harness.cli", "worker", "--burst"], env, w)
            ours = job_span_items_per_s(url, f"moderate:w{w}:")
            done = redis_sync.Redis.from_url(url).hlen(f"harness:verdicts:w{w}")
            assert done == n, f"{done} verdicts of {n}"
            del handle
            out["by_workers"][str(w)] = {"harness_items_per_s": round(ours, 1), "raw_arq_items_per_s": round(raw, 1),
                                         "ratio_to_raw_arq": round(ours / raw, 3)}
            log(f"workers W={w}: harness {ours:.0f}/s (all cache hits), raw Arq {raw:.0f}/s")
    return out


# ---- 3. enqueue rate ------------------------------------------------------------------------------
def bench_enqueue(n: int, tmp: Path) -> dict[str, Any]:
    import redis as redis_sync

    from harness.batch import connect, enqueue_dataframe_async

    items = synthetic(n)
    with redis_server(tmp / "redis-enqueue") as url:
        async def raw_loop() -> float:
            pool = await connect(url)
            start = time.perf_counter()
            for cid in items["content_id"]:
                await pool.enqueue_job("moderate_content", cid, "text", run_id="raw", _job_id=f"raw:{cid}")
            elapsed = time.perf_counter() - start
            await pool.aclose()
            return n / elapsed

        async def ours() -> float:
            start = time.perf_counter()
            handle = await enqueue_dataframe_async(items, redis_url=url, run_id="enq", progress=False)
            elapsed = time.perf_counter() - start
            assert handle.enqueued == n
            await handle.close()
            return n / elapsed

        raw = asyncio.run(raw_loop())
        redis_sync.Redis.from_url(url).flushdb()
        mine = asyncio.run(ours())
    log(f"enqueue {n}: harness {mine:.0f}/s (validation and item writes included), enqueue_job loop {raw:.0f}/s")
    return {"n": n, "harness_items_per_s": round(mine, 1), "raw_enqueue_job_items_per_s": round(raw, 1),
            "ratio_to_raw_arq": round(mine / raw, 3)}


# ---- 4. cached re-run ---------------------------------------------------------------------------
def bench_cached(tmp: Path) -> dict[str, Any]:
    from harness.llm.cache import ResponseCache, cache_key, cache_key_fields

    data = load_dataset(REAL) if REAL.exists() else synthetic(1680)
    settings = load_settings(cache_dir=tmp / "cached", cache_mode="use")
    first = asyncio.run(run_inline(data, settings=settings, progress=False, concurrency=16))
    second = asyncio.run(run_inline(data, settings=settings, progress=False, concurrency=16))
    assert second.cache_hits == len(data), (second.cache_hits, len(data))
    spec = bundled_prompt().with_model(settings.model)
    cache = ResponseCache(settings.cache_dir)
    lookups = []
    for item in data.itertuples():
        messages, _ = spec.render_messages(Item(item.content_id, item.text))
        key = cache_key(cache_key_fields(endpoint=settings.endpoint, model=spec.model, messages=messages,
                                         params=spec.sampling()))
        start = time.perf_counter()
        assert cache.get(key) is not None
        lookups.append((time.perf_counter() - start) * 1e6)
    cache.close()
    q = statistics.quantiles(lookups, n=100)
    out = {"dataset": str(REAL if REAL.exists() else "synthetic"), "n": len(data),
           "first_run_items_per_s": round(len(data) / first.elapsed_s, 1),
           "cached_items_per_s": round(len(data) / second.elapsed_s, 1),
           "speedup": round(first.elapsed_s / second.elapsed_s, 2),
           "lookup_p50_us": round(q[49], 1), "lookup_p99_us": round(q[98], 1)}
    log(f"cached re-run: {out}")
    return out


# ---- 5. memory ----------------------------------------------------------------------------------
MEMORY_SCRIPT = """
import asyncio, resource, sys
sys.path.insert(0, {root!r})
from bench.bench import synthetic
from harness.config import load_settings
from harness.inline import run_inline
n = int(sys.argv[1])
items = synthetic(n, distinct=1000)
r = asyncio.run(run_inline(items, settings=load_settings(cache_dir=sys.argv[2], cache_mode="use"),
                           progress=False, concurrency=32))
assert len(r.verdicts) == n

print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, r.elapsed_s)
"""


def bench_memory(sizes: list[int], tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"note": "items cycle through 1,000 distinct short texts, so most answers come from "
                                   "the response cache; the run's own state is what grows with N"}
    script = MEMORY_SCRIPT.format(root=str(ROOT))
    for n in sizes:
        proc = subprocess.run([sys.executable, "-c", script, str(n), str(tmp / "mem-cache")], capture_output=True,
                              text=True, cwd=ROOT, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        rss, elapsed = proc.stdout.split()
        out[str(n)] = {"peak_rss_mb": round(float(rss), 1), "elapsed_s": round(float(elapsed), 1)}
        log(f"memory N={n}: peak RSS {float(rss):.0f} MB in {float(elapsed):.0f}s")
    return out


# ---- 6. a peer ----------------------------------------------------------------------------------
def bench_peer(n: int, concurrency: int, latency_ms: float, tmp: Path) -> dict[str, Any]:
    try:
        from inspect_ai import Task
        from inspect_ai import eval as inspect_eval
        from inspect_ai.dataset import Sample
        from inspect_ai.model import ChatMessageSystem, ChatMessageUser
        from inspect_ai.scorer import includes
        from inspect_ai.solver import generate
    except ImportError as exc:
        return {"skipped": f"inspect-ai is not installed ({exc})"}
    items = synthetic(n)
    spec = bundled_prompt()
    samples = []
    for cid, text in zip(items["content_id"], items["text"], strict=True):
        messages, _ = spec.render_messages(Item(cid, text))
        samples.append(Sample(input=[ChatMessageSystem(content=messages[0]["content"]),
                                     ChatMessageUser(content=messages[1]["content"])], target="flagged", id=cid))
    task = Task(dataset=samples, solver=[generate()], scorer=includes())
    with llm_server("--latency-ms", str(latency_ms)) as url:
        os.environ.setdefault("OPENAI_API_KEY", "bench")
        start = time.perf_counter()
        logs = inspect_eval(task, model="openai/bench", model_base_url=url, max_connections=concurrency,
                            model_args={"responses_api": False},
                            max_samples=concurrency, log_dir=str(tmp / "inspect-logs"), display="none",
                            max_tokens=spec.max_tokens, temperature=spec.temperature)
        peer_elapsed = time.perf_counter() - start
        assert logs[0].status == "success", logs[0].status
        ours = asyncio.run(harness_inline(url, items, concurrency))
    peer = n / peer_elapsed
    log(f"peer: harness {ours:.0f}/s, Inspect AI {peer:.0f}/s")
    return {"peer": "inspect-ai", "n": n, "concurrency": concurrency, "latency_ms": latency_ms,
            "harness_items_per_s": round(ours, 1), "peer_items_per_s": round(peer, 1),
            "ratio": round(ours / peer, 3)}


# ---- report -------------------------------------------------------------------------------------
def summary(results: dict[str, Any]) -> dict[str, Any]:
    inline = results["inline"]["by_concurrency"]
    return {
        "inline_ratio_to_bare_client": {c: v["ratio_to_bare_client"] for c, v in inline.items()},
        "inline_ratio_to_limit": {c: v["ratio_to_limit"] for c, v in inline.items()},
        "worker_ratio_to_raw_arq": {w: v["ratio_to_raw_arq"] for w, v in results["workers"]["by_workers"].items()},
        "enqueue_ratio_to_raw_arq": results["enqueue"]["ratio_to_raw_arq"],
        "cached_items_per_s": results["cached"]["cached_items_per_s"],
        "peak_rss_mb": {n: v["peak_rss_mb"] for n, v in results["memory"].items() if n != "note"},
        "peer_ratio": results["peer"].get("ratio"),
    }


def table(results: dict[str, Any]) -> str:
    rows = ["| benchmark | harness | baseline (same run) | ratio |", "|---|---|---|---|"]
    inline = results["inline"]
    for c, v in inline["by_concurrency"].items():
        rows.append(f"| inline, C={c}, L={inline['latency_ms']:g} ms, N={inline['n']} | {v['harness_items_per_s']:.0f}/s "
                    f"| bare openai client {v['bare_client_items_per_s']:.0f}/s; C/L {v['littles_law_limit']:.0f}/s "
                    f"| {v['ratio_to_bare_client']:.2f} of bare, {v['ratio_to_limit']:.2f} of C/L |")
    for w, v in results["workers"]["by_workers"].items():
        rows.append(f"| workers W={w}, N={results['workers']['n']}, all cache hits | {v['harness_items_per_s']:.0f}/s "
                    f"| raw Arq no-op {v['raw_arq_items_per_s']:.0f}/s | {v['ratio_to_raw_arq']:.2f} |")
    e = results["enqueue"]
    rows.append(f"| enqueue {e['n']} DataFrame rows | {e['harness_items_per_s']:.0f}/s | enqueue_job loop "
                f"{e['raw_enqueue_job_items_per_s']:.0f}/s | {e['ratio_to_raw_arq']:.2f} |")
    c = results["cached"]
    rows.append(f"| cached re-run, {c['n']} items | {c['cached_items_per_s']:.0f}/s | first run "
                f"{c['first_run_items_per_s']:.0f}/s | {c['speedup']:.1f}x; lookup p50 {c['lookup_p50_us']:.0f} µs, "
                f"p99 {c['lookup_p99_us']:.0f} µs |")
    mem = {n: v for n, v in results["memory"].items() if n != "note"}
    sizes = sorted(mem, key=int)
    rows.append("| peak RSS, inline | " + ", ".join(f"N={int(n):,}: {mem[n]['peak_rss_mb']:.0f} MB" for n in sizes)
                + f" | N={int(sizes[0]):,} | {mem[sizes[-1]]['peak_rss_mb'] / mem[sizes[0]]['peak_rss_mb']:.2f} |")
    p = results["peer"]
    if "ratio" in p:
        rows.append(f"| peer, N={p['n']}, C={p['concurrency']}, L={p['latency_ms']:g} ms | {p['harness_items_per_s']:.0f}/s "
                    f"| Inspect AI {p['peer_items_per_s']:.0f}/s | {p['ratio']:.2f} |")
    else:
        rows.append(f"| peer | - | {p.get('skipped')} | - |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    quick = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    started = time.perf_counter()
    try:
        results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}
        results["inline"] = bench_inline(300 if quick else 2000, [8, 32, 128], 100.0)
        results["workers"] = bench_workers(300 if quick else 2000, [1, 2], tmp)
        results["enqueue"] = bench_enqueue(2000 if quick else 10_000, tmp)
        results["cached"] = bench_cached(tmp)
        results["memory"] = bench_memory([2_000, 10_000] if quick else [10_000, 100_000], tmp)
        results["peer"] = bench_peer(200 if quick else 500, 32, 100.0, tmp)
        results["summary"] = summary(results)
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (ROOT / "bench" / "results.md").write_text(text + "\n")
    print(text)
    print(f"\n{results['machine']['cores']} cores, {results['elapsed_s']} s; bench/results.json written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
