"""The inline runner: the worker's task and startup, run in this process with no Redis.

It applies Arq's rules so a run behaves as it would on workers: `job_try` counts up,
`arq.Retry(defer=...)` waits and tries again up to `max_tries`, a job past `job_timeout` is
not retried, and every item ends with a verdict. Concurrency is a fixed pool of coroutines
pulling from the item list, so memory does not grow with the number of pending items.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from arq import Retry
from tqdm.auto import tqdm

from harness.config import Settings, check_threshold, load_settings
from harness.datasets import iter_items, load_dataset
from harness.events import Event, MemoryEventBus
from harness.results import RunResult, check_run_id, default_run_id
from harness.schema import Item, PromptSpec, Verdict, load_prompt
from harness.store import SpillStore
from harness.sync import run_blocking
from harness.tasks import JOB_TIMEOUT_S, moderate_content, shutdown, startup

EventListener = Callable[[Event], None]


def resolve_prompt(prompt: PromptSpec | str | Path | None, model: str | None, settings: Settings) -> PromptSpec:
    """A prompt spec with its model filled in, so the version covers the model too."""
    spec = load_prompt(prompt)
    return spec.with_model(model or spec.model or settings.model)


def resolve_run(prompt: PromptSpec | str | Path | None, model: str | None, settings: Settings | None,
                cache: str | None, semantic_threshold: float | None) -> tuple[Settings, PromptSpec]:
    """The settings (cache mode applied) and prompt of a run, checked before any work starts."""
    settings = settings or load_settings()
    if cache is not None:
        settings = settings.with_cache_mode(cache)
    if semantic_threshold is not None:
        check_threshold(semantic_threshold, "semantic_threshold")
    return settings, resolve_prompt(prompt, model, settings)


def resolve_items(data: pd.DataFrame | str | Path | Sequence[Item], codes: Sequence[str]) -> pd.DataFrame:
    """Any accepted input as the canonical DataFrame (see harness.datasets)."""
    if isinstance(data, pd.DataFrame) and {"content_id", "text"} <= set(data.columns) \
            and all(f"gold_{c}" in data.columns for c in codes):
        return data
    if isinstance(data, list | tuple):
        rows = [{"content_id": i.content_id, "content_type": i.content_type, "text": i.text,
                 **{c: i.labels.get(c) for c in codes}} for i in data]
        return load_dataset(pd.DataFrame(rows, columns=["content_id", "content_type", "text", *codes]),
                            codes=codes)
    return load_dataset(data, codes=codes)  # type: ignore[arg-type]


async def run_inline(
    data: pd.DataFrame | str | Path | Sequence[Item],
    prompt: PromptSpec | str | Path | None = None,
    *,
    model: str | None = None,
    run_id: str | None = None,
    concurrency: int | None = None,
    cache: str | None = None,
    settings: Settings | None = None,
    job_timeout: float = JOB_TIMEOUT_S,
    on_event: EventListener | None = None,
    events: MemoryEventBus | None = None,
    progress: bool | str = True,
    sample_index: int = 0,
    semantic_cache: bool = False,
    semantic_threshold: float | None = None,
    semantic_index: Any = None,
    notify: bool = False,
) -> RunResult:
    """Moderate every item of `data` with `prompt`; return when each has a verdict.

    `semantic_cache=True` lets near-duplicates reuse a verdict (harness/semantic.py); each run
    gets a fresh in-memory index unless `semantic_index` (a MemorySemanticIndex) is shared.
    `notify=True` sends the notifications of harness/notify.py (item flagged, run finished),
    shown in the notebook too."""
    settings, spec = resolve_run(prompt, model, settings, cache, semantic_threshold)
    items = resolve_items(data, spec.taxonomy.codes)
    run_id = check_run_id(run_id) if run_id else default_run_id(spec, items)
    bus = events or MemoryEventBus(history=0)
    remove = bus.add_listener(on_event) if on_event else None

    ctx: dict[str, Any] = {"settings": settings, "events": bus, "store": SpillStore()}
    if semantic_index is not None:
        ctx["semantic"] = semantic_index
    await startup(ctx)
    store = ctx["store"]
    await store.put_run(run_id, {
        "prompt": spec.to_dict(), "prompt_version": spec.version, "model": spec.model,
        "cache_mode": settings.cache_mode, "sample_index": sample_index,
        "dataset": str(items.attrs.get("source", "DataFrame")), "n_items": len(items),
        "endpoint": settings.endpoint, "created": time.time(),
        "semantic_cache": bool(semantic_cache), "semantic_threshold": semantic_threshold, "notify": bool(notify),
    })
    await store.put_items(run_id, iter_items(items))

    n_workers = max(1, min(concurrency or settings.concurrency, len(items) or 1))
    todo = iter(items["content_id"].tolist())
    types = dict(zip(items["content_id"], items["content_type"], strict=True))
    bar = _progress_bar(len(items), spec.label, progress)
    started = time.perf_counter()

    async def pool_worker() -> None:
        for content_id in todo:
            await run_job(ctx, content_id, types[content_id], run_id=run_id,
                          max_tries=settings.max_tries, job_timeout=job_timeout)
            if bar is not None:
                bar.update(1)

    try:
        await asyncio.gather(*(pool_worker() for _ in range(n_workers)))
        if notify:
            from harness.notify import run_finished

            await run_finished(ctx, run_id)
        verdicts = await store.verdicts(run_id)
        llm = ctx["llm"]
        return RunResult(run_id=run_id, spec=spec, model=spec.model, endpoint=settings.endpoint,
                         dataset=str(items.attrs.get("source", "DataFrame")), items=items,
                         verdicts=verdicts, elapsed_s=time.perf_counter() - started,
                         cache_hits=llm.hits, cache_misses=llm.misses)
    finally:
        if bar is not None:
            bar.close()
        if remove:
            remove()
        await shutdown(ctx)


async def run_job(ctx: dict[str, Any], content_id: str, content_type: str, *, run_id: str,
                  max_tries: int, job_timeout: float) -> None:
    """One job with Arq's semantics: retries on Retry, no retry after a job timeout."""
    store = ctx["store"]
    job_id = f"moderate:{run_id}:{content_id}"
    enqueue_time = time.time()
    for job_try in range(1, max_tries + 1):
        job_ctx = {**ctx, "job_id": job_id, "job_try": job_try, "max_tries": max_tries,
                   "enqueue_time": enqueue_time, "score": int(time.time() * 1000)}
        try:
            await asyncio.wait_for(moderate_content(job_ctx, content_id, content_type, run_id=run_id),
                                   job_timeout)
            return
        except Retry as retry:
            await asyncio.sleep((retry.defer_score or 0) / 1000)
        except TimeoutError:
            await _record_failure(ctx, run_id, content_id, job_try,
                                  f"job timed out after {job_timeout:g}s (not retried, as on Arq)")
            return
        except Exception as exc:  # noqa: BLE001 - the task already turns errors into verdicts
            await _record_failure(ctx, run_id, content_id, job_try, f"job failed: {type(exc).__name__}: {exc}")
            return
    if await store.get_verdict(run_id, content_id) is None:
        await _record_failure(ctx, run_id, content_id, max_tries, f"max {max_tries} tries exceeded")


async def _record_failure(ctx: dict[str, Any], run_id: str, content_id: str, job_try: int, message: str) -> None:
    run = await ctx["store"].get_run(run_id) or {}
    verdict = Verdict(content_id, "error", error=message, tries=job_try, run_id=run_id,
                      prompt_version=run.get("prompt_version", ""), model=run.get("model", ""))
    if await ctx["store"].put_verdict(run_id, verdict):
        await ctx["events"].publish(Event("error", run_id, content_id, {"verdict": verdict.to_dict()}))


def _progress_bar(total: int, label: str, progress: bool | str):
    if not progress or total == 0:
        return None
    return tqdm(total=total, desc=label if progress is True else str(progress), unit="item",
                dynamic_ncols=True, mininterval=0.5)


def run_inline_sync(*args: Any, **kwargs: Any) -> RunResult:
    """Blocking twin of `run_inline`; safe inside a notebook whose event loop is running."""
    return run_blocking(run_inline(*args, **kwargs))
