"""The Arq task functions and their startup/shutdown: the same code runs inline and on workers.

`moderate_content` judges one item of a run. It never loses the item: a transient model error
raises `arq.Retry` until the last try, where it stores an `error` verdict instead; a fatal
error, empty text or an unexpected failure also ends in an `error` verdict.
"""

from __future__ import annotations

import time
from typing import Any

from arq import Retry

from harness.config import Settings, load_settings
from harness.events import Event, EventSink, MemoryEventBus
from harness.llm.errors import FatalLLMError, LLMError, TransientLLMError
from harness.llm.service import LLMService
from harness.parsing import parse_verdict
from harness.retry import backoff_delay
from harness.schema import Item, PromptSpec, Usage, Verdict
from harness.store import MemoryStore, Store

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


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what startup built; safe to call twice."""
    if "heartbeat_task" in ctx:
        from harness.recovery import stop_heartbeat

        await stop_heartbeat(ctx)
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
    try:
        run = await store.get_run(run_id)
        item = await store.get_item(run_id, content_id)
        if run is None or item is None:
            what = "run" if run is None else "item"
            verdict = Verdict(content_id, "error", error=f"{what} not found in the store for run {run_id!r}")
            return await _finish(store, emit, run_id, verdict, job_try)
        spec = PromptSpec.from_dict(run["prompt"], name=run["prompt"].get("name", "prompt"))
        await emit("status", state="started", job_try=job_try, max_tries=max_tries)
        verdict = await _judge(ctx, spec, item, run, emit)
    except TransientLLMError as exc:
        if job_try < max_tries:
            defer = backoff_delay(job_try, retry_after=exc.retry_after, base_s=settings.retry_base_s,
                                  cap_s=settings.retry_cap_s)
            await emit("status", state="retrying", job_try=job_try, max_tries=max_tries,
                       defer_s=defer, error=str(exc))
            raise Retry(defer=defer) from exc
        verdict = Verdict(content_id, "error", error=f"gave up after {job_try} tries: {exc}")
    except FatalLLMError as exc:
        verdict = Verdict(content_id, "error", error=f"not retried: {exc}")
    except LLMError as exc:  # pragma: no cover - every LLMError is one of the two above
        verdict = Verdict(content_id, "error", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - an item must end with a verdict, whatever broke
        verdict = Verdict(content_id, "error", error=f"internal error: {type(exc).__name__}: {exc}")
    return await _finish(store, emit, run_id, verdict, job_try)


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


async def _finish(store: Store, emit, run_id: str, verdict: Verdict, job_try: int) -> dict[str, Any]:
    run = await store.get_run(run_id) or {}
    verdict.run_id = run_id
    verdict.prompt_version = run.get("prompt_version", "")
    verdict.model = run.get("model", "")
    verdict.tries = job_try
    stored = await store.put_verdict(run_id, verdict)
    if not stored:  # another try or worker got there first: report the verdict that stands
        verdict = await store.get_verdict(run_id, verdict.content_id) or verdict
    await emit("error" if verdict.outcome == "error" else "result", verdict=verdict.to_dict())
    return _summary(verdict)


def _summary(verdict: Verdict) -> dict[str, Any]:
    """What Arq keeps as the job result: small, JSON-safe; the full verdict lives in the store."""
    return {"content_id": verdict.content_id, "outcome": verdict.outcome, "flagged": verdict.flagged,
            "error": verdict.error, "cached": verdict.cached}
