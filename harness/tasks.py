"""The Arq task functions and their startup/shutdown: the same code runs inline and on workers.

`moderate_content` judges one item of a run. It never loses the item: a transient model error
raises `arq.Retry` until the last try, where it stores an `error` verdict instead; a fatal
error, empty text or an unexpected failure also ends in an `error` verdict.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from arq import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from harness import notify, semantic
from harness.config import Settings, load_settings
from harness.events import Event, EventSink, MemoryEventBus
from harness.llm.errors import FatalLLMError, LLMError, TransientLLMError
from harness.llm.service import LLMService
from harness.parsing import parse_verdict
from harness.retry import backoff_delay
from harness.schema import Item, PromptSpec, Usage, Verdict
from harness.store import MemoryStore, Store

log = logging.getLogger("harness.tasks")

JOB_TIMEOUT_S = 300  # Arq's job_timeout; a timed-out job is not retried, so the model call's own
KEEP_RESULT_S = 3600  # timeout (HARNESS_LLM_TIMEOUT, 60 s) stays well below it.


async def startup(ctx: dict[str, Any]) -> None:
    """Build what the task needs. Keys already in ctx (settings, store, events, llm) are kept.

    On an Arq worker, ctx['redis'] exists and the shared Redis store and event stream are used;
    inline, an in-memory store and bus are.
    """
    settings: Settings = ctx.get("settings") or load_settings()
    ctx["settings"] = settings
    if "store" not in ctx or "events" not in ctx:
        if "redis" in ctx:
            from harness.recovery import start_heartbeat
            from harness.redis_store import RedisEventStream, RedisStore

            ctx.setdefault("store", RedisStore(ctx["redis"]))
            ctx.setdefault("events", RedisEventStream(ctx["redis"]))
            await start_heartbeat(ctx)
        else:
            ctx.setdefault("store", MemoryStore())
            ctx.setdefault("events", MemoryEventBus())
    ctx.setdefault("llm", LLMService(settings))
    ctx["llm"].check_cache()
    ctx.setdefault("run_memo", {})  # shared by the per-job copies of ctx that Arq makes
    semantic.install(ctx)  # the semantic index (Redis on workers, memory inline) and the embedder
    notify.install_log_redaction(settings)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what startup built; safe to call twice."""
    if "heartbeat_task" in ctx:
        from harness.recovery import stop_heartbeat

        await stop_heartbeat(ctx)
    await semantic.close(ctx)
    llm: LLMService | None = ctx.pop("llm", None)
    if llm is not None:
        await llm.aclose()


async def moderate_content(ctx: dict[str, Any], content_id: str, content_type: str = "text", *,
                           run_id: str) -> dict[str, Any]:
    """Moderate one item of `run_id`: stream commentary, parse, store and announce a verdict."""
    store: Store = ctx["store"]
    events: EventSink = ctx["events"]
    settings: Settings = ctx["settings"]
    job_try: int = int(ctx.get("job_try") or 1)
    max_tries: int = int(ctx.get("max_tries") or settings.max_tries)

    async def emit(kind: str, **data: Any) -> None:
        await events.publish(Event(kind, run_id, content_id, data))  # type: ignore[arg-type]

    existing = await store.get_verdict(run_id, content_id)
    if existing is not None:
        return _summary(existing)

    verdict: Verdict
    probe: semantic.Probe | None = None
    try:
        run, spec = await _run_and_spec(ctx, run_id)
        item = await store.get_item(run_id, content_id)
        if run is None or spec is None or item is None:
            what = "run" if run is None else "item"
            verdict = Verdict(content_id, "error", error=f"{what} not found in the store for run {run_id!r}")
            return await _finish(ctx, emit, run_id, verdict, job_try)
        await emit("status", state="started", job_try=job_try, max_tries=max_tries)
        probe = await semantic.probe(ctx, spec, item, run)  # None unless the run uses the semantic cache
        if probe is not None and probe.hit is not None:
            verdict = probe.hit.verdict_for(item, truncated=len(item.text) > spec.max_text_chars)
            await emit("commentary", text=f"(semantic cache: the verdict of {verdict.semantic_source}, "
                                          f"similarity {verdict.semantic_similarity:.3f}) {verdict.commentary}")
        else:
            verdict = await _judge(ctx, spec, item, run, emit)
    except TransientLLMError as exc:
        if job_try < max_tries:
            defer = backoff_delay(job_try, retry_after=exc.retry_after, base_s=settings.retry_base_s,
                                  cap_s=settings.retry_cap_s)
            await emit("status", state="retrying", job_try=job_try, max_tries=max_tries,
                       defer_s=defer, error=str(exc))
            if probe is not None:
                probe.release()
            raise Retry(defer=defer) from exc
        verdict = Verdict(content_id, "error", error=f"gave up after {job_try} tries: {exc}")
    except FatalLLMError as exc:
        verdict = Verdict(content_id, "error", error=f"not retried: {exc}")
    except LLMError as exc:  # pragma: no cover - every LLMError is one of the two above
        verdict = Verdict(content_id, "error", error=str(exc))
    except (RedisConnectionError, RedisTimeoutError) as exc:  # the store is briefly gone: not the item's fault
        if probe is not None:
            probe.release()
        if job_try < max_tries:
            raise Retry(defer=backoff_delay(job_try, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)) from exc
        raise  # nowhere to write a verdict; Arq records the failure and a resume retries the item
    except Exception as exc:  # noqa: BLE001 - an item must end with a verdict, whatever broke
        verdict = Verdict(content_id, "error", error=f"internal error: {type(exc).__name__}: {exc}")
    except BaseException:  # cancelled (job timeout, shutdown): near copies waiting on it go on
        if probe is not None:
            probe.release()
        raise
    try:
        return await _finish(ctx, emit, run_id, verdict, job_try, probe=probe)
    finally:
        if probe is not None:
            probe.release()  # near copies waiting on this item (inline) go on


RUN_CACHE_S = 10.0


async def _run_and_spec(ctx: dict[str, Any], run_id: str) -> tuple[dict[str, Any] | None, PromptSpec | None]:
    """The run's description and prompt, remembered for a few seconds per worker.

    A run's prompt never changes (enqueue refuses another version under the same id), so
    thousands of jobs of one run need not each re-read and re-parse it.
    """
    memo: dict[str, tuple[float, dict[str, Any], PromptSpec]] = ctx.setdefault("run_memo", {})
    hit = memo.get(run_id)
    if hit is not None and time.monotonic() - hit[0] < RUN_CACHE_S:
        return hit[1], hit[2]
    run = await ctx["store"].get_run(run_id)
    if run is None:
        return None, None
    spec = PromptSpec.from_dict(run["prompt"], name=run["prompt"].get("name", "prompt"))
    memo[run_id] = (time.monotonic(), run, spec)
    return run, spec


async def _judge(ctx: dict[str, Any], spec: PromptSpec, item: Item, run: dict[str, Any], emit) -> Verdict:
    if not item.text.strip():
        return Verdict(item.content_id, "error", error="empty text: nothing to moderate")
    llm: LLMService = ctx["llm"]
    messages, truncated = spec.render_messages(item)

    async def on_delta(text: str) -> None:
        await emit("commentary", text=text)

    started = time.perf_counter()
    completion = await llm.complete(spec, messages, on_delta=on_delta, cache_mode=run.get("cache_mode"),
                                    sample_index=int(run.get("sample_index") or 0))
    parsed = parse_verdict(completion.text, spec.taxonomy.codes, refusal=completion.refusal)
    if parsed.outcome == "unparsable":  # a later run should ask again, not replay the failure
        await llm.forget(completion.cache_key)
    return Verdict(
        content_id=item.content_id,
        outcome=parsed.outcome,  # type: ignore[arg-type]
        flagged=parsed.flagged,
        categories=parsed.categories,
        scores=parsed.scores,
        commentary=parsed.commentary,
        rationale=parsed.rationale,
        raw=completion.text,
        error=parsed.error,
        usage=completion.usage if isinstance(completion.usage, Usage) else Usage(),
        latency_s=round(completion.latency_s if completion.cached else time.perf_counter() - started, 4),
        cached=completion.cached,
        truncated=truncated,
    )


async def _finish(ctx: dict[str, Any], emit, run_id: str, verdict: Verdict, job_try: int, *,
                  probe: semantic.Probe | None = None) -> dict[str, Any]:
    store: Store = ctx["store"]
    run = (await _run_and_spec(ctx, run_id))[0] or {}
    verdict.run_id = run_id
    verdict.prompt_version = run.get("prompt_version", "")
    verdict.model = run.get("model", "")
    verdict.tries = job_try
    final = Event("error" if verdict.outcome == "error" else "result", run_id, verdict.content_id,
                  {"verdict": verdict.to_dict()})
    stored = await store.put_final(run_id, verdict, final, ctx["events"])
    if not stored:  # another try or worker got there first, and announced the verdict that stands
        verdict = await store.get_verdict(run_id, verdict.content_id) or verdict
    if stored:
        await _after_verdict(ctx, run, run_id, verdict, probe)
    return _summary(verdict)


async def _after_verdict(ctx: dict[str, Any], run: dict[str, Any], run_id: str, verdict: Verdict,
                         probe: semantic.Probe | None) -> None:
    """Follow-ups of a newly stored verdict: the semantic index, notifications. The verdict
    stands whatever happens here, so a failure is logged, never raised."""
    try:
        await semantic.after_verdict(ctx, run, verdict, probe)
    except Exception as exc:  # noqa: BLE001
        log.warning("semantic cache update for %s failed: %s: %s", verdict.content_id, type(exc).__name__, exc)
    try:
        await notify.after_verdict(ctx, run, run_id, verdict)
    except Exception as exc:  # noqa: BLE001
        log.warning("notification for %s failed: %s: %s", verdict.content_id, type(exc).__name__, exc)


def _summary(verdict: Verdict) -> dict[str, Any]:
    """What Arq keeps as the job result: small, JSON-safe; the full verdict lives in the store."""
    return {"content_id": verdict.content_id, "outcome": verdict.outcome, "flagged": verdict.flagged,
            "error": verdict.error, "cached": verdict.cached}
