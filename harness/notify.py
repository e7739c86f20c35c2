"""Notifications: a run finished, an item was flagged in chosen categories, a run is stuck.

`notify(ctx, note)` sends a notification to every configured channel. On workers each channel
but `log` is its own Arq job `send_notification` (id `notify:<id>:<channel>`, so a trigger that
fires twice sends once); inline, and for `log`, the same function is called here, with the same
retries.

Channels (`HARNESS_NOTIFY_CHANNELS`, default `log`, plus `webhook` when a URL is set):

* `webhook`: an HTTP POST (httpx) of a JSON body with a Slack-compatible `text` field and the
  details under `harness`, to `HARNESS_WEBHOOK_URL`, with extra headers from
  `HARNESS_WEBHOOK_HEADERS` (a JSON object, e.g. `{"Authorization": "Bearer ..."}`) and an
  `X-Harness-Notification-Id` header a receiver can deduplicate on;
* `log`: one WARNING line on the `harness.notify` logger;
* `display`: kept in `DISPLAYED` (the last 1000) and shown with IPython's `display` when running
  in a notebook kernel; inline runs only (`run_inline(..., notify=True)`).

A failed delivery is retried with `arq.Retry` and `harness.retry.backoff_delay`
(`HARNESS_RETRY_BASE`/`_CAP`) up to `HARNESS_NOTIFY_MAX_TRIES` (5). It is never lost silently:
after the last try an ERROR is logged and the notification, channel and error are pushed to the
Redis list `harness:notifications:failed` (inline: `FAILED`). Delivered ones are kept in
`harness:notifications:sent` (the last 1000).

Secrets: the webhook URL (its path and query often are the token) and header values never
appear in logs, events, job arguments or Redis: `redact()` replaces them, and a logging filter
does the same for httpx's request log lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
from arq import Retry

from harness.config import Settings
from harness.retry import backoff_delay

log = logging.getLogger("harness.notify")

CHANNELS = ("webhook", "log", "display")
TRIGGERS = ("run_finished", "item_flagged", "run_stuck", "run_summary")
SENT_KEY = "harness:notifications:sent"
FAILED_KEY = "harness:notifications:failed"
KEEP = 1000

DISPLAYED: deque[dict[str, Any]] = deque(maxlen=KEEP)  # the in-notebook channel
FAILED: deque[dict[str, Any]] = deque(maxlen=KEEP)  # inline deliveries that gave up


# ---- secrets ---------------------------------------------------------------------------------
def secrets_of(settings: Settings) -> list[str]:
    """Every string that must not be shown: the webhook URL and its parts, header values, API key."""
    found: set[str] = set()
    url = settings.webhook_url
    if url:
        found.add(url)
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            found.add(parts.path)
            found.update(seg for seg in parts.path.split("/") if len(seg) >= 6)
        if parts.query:
            found.add(parts.query)
            found.update(v for _, v in parse_qsl(parts.query) if len(v) >= 4)
        if parts.password:
            found.add(parts.password)
        if parts.username and len(parts.username) >= 6:
            found.add(parts.username)
    try:
        values = list(webhook_headers(settings).values())
    except ValueError:  # unreadable headers: hide all of it (the delivery reports the error)
        values = [settings.webhook_headers or ""]
    for value in values:
        found.add(value)
        found.update(tok for tok in value.split() if len(tok) >= 6)
    if settings.api_key:
        found.add(settings.api_key)
    found |= {quote(s, safe="") for s in list(found)} | {quote(s) for s in list(found)}
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def redact(text: str, settings: Settings | None = None, *, secrets: list[str] | None = None) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets if secrets is not None else (secrets_of(settings) if settings else []):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def safe_url(url: str | None) -> str:
    """scheme://host/*** : enough to tell where a webhook goes, nothing of its token."""
    if not url:
        return "(none)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


class RedactingFilter(logging.Filter):
    """Rewrites log records so the configured secrets never reach a handler."""

    def __init__(self, secrets: list[str]):
        super().__init__("harness-redact")
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = redact(message, secrets=self.secrets)
            if record.exc_info and record.exc_info[1] is not None:  # tracebacks carry URLs too
                cleaned += "\n" + redact(logging.Formatter().formatException(record.exc_info), secrets=self.secrets)
                record.exc_info = None
                record.exc_text = None
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


_FILTERED_LOGGERS = ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "harness.notify",
                     "arq.worker", "arq.jobs", "arq.connections")


def install_log_redaction(settings: Settings) -> None:
    """Filter the loggers that could see a webhook URL, and every handler on the root logger."""
    secrets = secrets_of(settings)
    if not secrets:
        return
    targets: list[Any] = [logging.getLogger(name) for name in _FILTERED_LOGGERS]
    targets += list(logging.getLogger().handlers)
    for target in targets:
        for existing in list(target.filters):
            if isinstance(existing, RedactingFilter):
                target.removeFilter(existing)
        target.addFilter(RedactingFilter(secrets))


def webhook_headers(settings: Settings) -> dict[str, str]:
    raw = settings.webhook_headers
    if not raw:
        return {}
    try:
        headers = json.loads(raw)
    except ValueError as exc:
        raise ValueError("HARNESS_WEBHOOK_HEADERS: expected a JSON object of header names to values") from exc
    if not isinstance(headers, dict):
        raise ValueError("HARNESS_WEBHOOK_HEADERS: expected a JSON object of header names to values")
    return {str(k): str(v) for k, v in headers.items()}


# ---- notifications ---------------------------------------------------------------------------
def make_note(kind: str, text: str, *, run_id: str = "", content_id: str = "", note_id: str | None = None,
              **data: Any) -> dict[str, Any]:
    """A notification: JSON-safe, and free of secrets (it travels as job arguments)."""
    return {"id": note_id or uuid.uuid4().hex[:16], "kind": kind, "text": text, "run_id": run_id,
            "content_id": content_id, "data": data, "ts": time.time()}


def channels_for(ctx: dict[str, Any]) -> list[str]:
    settings: Settings = ctx["settings"]
    chosen = [c for c in settings.notify_channels if c in CHANNELS]
    if "redis" in ctx:
        return [c for c in chosen if c != "display"]  # a worker has no notebook to show it in
    if ctx.get("notify_display", True) and "display" not in chosen:
        chosen.append("display")
    return chosen


async def notify(ctx: dict[str, Any], note: dict[str, Any], channels: list[str] | None = None) -> None:
    """Send `note` to each channel: as Arq jobs on workers, directly (with retries) inline."""
    settings: Settings = ctx["settings"]
    if note.get("kind") in TRIGGERS and note["kind"] not in settings.notify_on:
        return
    for channel in channels if channels is not None else channels_for(ctx):
        if channel == "webhook" and not settings.webhook_url:
            continue
        if "redis" in ctx and channel != "log":
            await ctx["redis"].enqueue_job("send_notification", note, channel,
                                           _job_id=f"notify:{note['id']}:{channel}")
        else:  # inline, and a log line on workers (it cannot fail, so it needs no job of its own)
            await deliver_inline(ctx, note, channel)


async def deliver_inline(ctx: dict[str, Any], note: dict[str, Any], channel: str) -> dict[str, Any]:
    """`send_notification` with Arq's retry rules, in this process."""
    settings: Settings = ctx["settings"]
    result: dict[str, Any] = {}
    for job_try in range(1, settings.notify_max_tries + 1):
        try:
            return await send_notification({**ctx, "job_try": job_try}, note, channel)
        except Retry as retry:
            await asyncio.sleep((retry.defer_score or 0) / 1000)
    return result


async def send_notification(ctx: dict[str, Any], note: dict[str, Any], channel: str = "log") -> dict[str, Any]:
    """Arq task: deliver one notification to one channel; retried with backoff, never lost silently."""
    settings: Settings = ctx["settings"]
    job_try = int(ctx.get("job_try") or 1)
    max_tries = settings.notify_max_tries
    try:
        if channel == "webhook":
            await _post_webhook(ctx, note)
        elif channel == "log":
            log.warning("[%s] %s", note.get("kind"), note.get("text"))
        elif channel == "display":
            _display(note)
        else:
            raise ValueError(f"unknown notification channel {channel!r} (expected one of {CHANNELS})")
    except Exception as exc:  # noqa: BLE001 - every failure is retried, then recorded
        error = redact(f"{type(exc).__name__}: {exc}", settings)
        if job_try < max_tries and not isinstance(exc, ValueError):
            defer = backoff_delay(job_try, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)
            log.info("notification %s to %s failed (try %d/%d), retrying in %.2fs: %s", note.get("id"), channel,
                     job_try, max_tries, defer, error)
            raise Retry(defer=defer) from None
        log.error("notification %s (%s) to %s gave up after %d tries: %s", note.get("id"), note.get("kind"),
                  channel, job_try, error)
        failure = {"note": note, "channel": channel, "error": error, "tries": job_try, "ts": time.time()}
        await _record(ctx, FAILED_KEY, failure)
        return {"id": note.get("id"), "channel": channel, "delivered": False, "error": error}
    await _record(ctx, SENT_KEY, {"note": note, "channel": channel, "tries": job_try, "ts": time.time()})
    return {"id": note.get("id"), "channel": channel, "delivered": True, "tries": job_try}


async def _record(ctx: dict[str, Any], key: str, entry: dict[str, Any]) -> None:
    if "redis" in ctx:
        blob = json.dumps(entry, ensure_ascii=False, default=str)
        async with ctx["redis"].pipeline(transaction=True) as pipe:
            pipe.lpush(key, blob)
            pipe.ltrim(key, 0, KEEP - 1)
            await pipe.execute()
    elif key == FAILED_KEY:
        FAILED.append(entry)


async def _post_webhook(ctx: dict[str, Any], note: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    body = {"text": note.get("text", ""), "harness": {k: v for k, v in note.items() if k != "text"}}
    headers = {"X-Harness-Notification-Id": str(note.get("id", "")), **webhook_headers(settings)}
    client: httpx.AsyncClient | None = ctx.get("http_client")
    if client is None:
        async with httpx.AsyncClient(timeout=10.0) as own:
            response = await own.post(settings.webhook_url or "", json=body, headers=headers)
    else:
        response = await client.post(settings.webhook_url or "", json=body, headers=headers)
    if response.status_code >= 300:
        raise RuntimeError(f"webhook {safe_url(settings.webhook_url)} answered HTTP {response.status_code}")


def _display(note: dict[str, Any]) -> None:
    DISPLAYED.append(note)
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
        from IPython.display import display  # type: ignore[import-not-found]
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
        display({"text/plain": f"[{note.get('kind')}] {note.get('text')}",
                 "text/markdown": f"**{note.get('kind')}** {note.get('text')}"}, raw=True)


# ---- triggers --------------------------------------------------------------------------------
def summarize(verdicts: dict[str, Any], n_items: int) -> dict[str, Any]:
    """Counts for a run's notifications: items, done, outcomes, flagged, semantic hits."""
    outcomes: dict[str, int] = {}
    flagged = semantic = 0
    for v in verdicts.values():
        outcomes[v.outcome] = outcomes.get(v.outcome, 0) + 1
        flagged += bool(v.flagged)
        semantic += v.semantic_source is not None
    return {"items": n_items, "done": len(verdicts), "outcomes": dict(sorted(outcomes.items())),
            "flagged": flagged, "semantic_hits": semantic}


def summary_text(run_id: str, s: dict[str, Any], prefix: str) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()) or "none yet"
    text = f"harness: run {run_id} {prefix}: {s['done']}/{s['items']} items judged ({outcomes}), {s['flagged']} flagged"
    if s.get("semantic_hits"):
        text += f", {s['semantic_hits']} semantic-cache hits"
    return text


async def run_finished(ctx: dict[str, Any], run_id: str) -> None:
    """Send the 'run finished' notification with the run's summary."""
    store = ctx["store"]
    run = await store.get_run(run_id) or {}
    verdicts = await store.verdicts(run_id)
    s = summarize(verdicts, int(run.get("n_items") or len(verdicts)))
    await notify(ctx, make_note("run_finished", summary_text(run_id, s, "finished"), run_id=run_id,
                                note_id=f"run_finished:{run_id}:{s['items']}", summary=s))


async def after_verdict(ctx: dict[str, Any], run: dict[str, Any], run_id: str, verdict: Any) -> None:
    """Triggers that follow a stored verdict: an item flagged in chosen categories; on workers,
    the run's last verdict (the inline runner announces its own end)."""
    settings: Settings = ctx["settings"]
    if not run.get("notify", "redis" in ctx):
        return
    chosen = [c for c in settings.notify_categories if verdict.categories.get(c)]
    if verdict.outcome == "ok" and chosen and "item_flagged" in settings.notify_on:
        how = f" (semantic-cache hit from {verdict.semantic_source})" if verdict.semantic_source else ""
        await notify(ctx, make_note("item_flagged", f"harness: run {run_id}: item {verdict.content_id} flagged "
                                    f"{', '.join(chosen)}{how}", run_id=run_id, content_id=verdict.content_id,
                                    note_id=f"item_flagged:{run_id}:{verdict.content_id}", categories=chosen))
    if "redis" in ctx and hasattr(ctx["store"], "count"):
        n_items, n_verdicts = await ctx["store"].count(run_id)
        if n_items and n_verdicts >= n_items:
            first = await ctx["redis"].set(f"harness:notified:run_finished:{run_id}:{n_items}", "1", nx=True,
                                           ex=30 * 86400)
            if first:
                await run_finished(ctx, run_id)
