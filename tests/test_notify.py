"""Notifications against a real local webhook server, real Redis and real `harness worker` processes."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
import redis as redis_sync
from conftest import free_port

from harness import notify
from harness.batch import connect, enqueue_dataframe_async
from harness.config import load_settings
from harness.inline import run_inline
from harness.schema import bundled_prompt

PATH_TOKEN = "T0KEN-path-abc123"
QUERY_TOKEN = "qs-secret-987654"
HEADER_TOKEN = "hdr-secret-456789"
SECRETS = (PATH_TOKEN, QUERY_TOKEN, HEADER_TOKEN)


class Hook:
    """A webhook receiver in a thread: records every request, answers from a script of statuses."""

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.requests: list[dict] = []
        self.port = free_port()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                status = hook.statuses.pop(0) if hook.statuses else 200
                hook.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                      "status": status})
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"nope")

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{PATH_TOKEN}?token={QUERY_TOKEN}"

    @property
    def env(self) -> dict[str, str]:
        return {"HARNESS_WEBHOOK_URL": self.url,
                "HARNESS_WEBHOOK_HEADERS": json.dumps({"Authorization": f"Bearer {HEADER_TOKEN}"})}

    def accepted(self, kind: str | None = None) -> list[dict]:
        return [r for r in self.requests if r["status"] < 300
                and (kind is None or r["body"]["harness"]["kind"] == kind)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    hooks: list[Hook] = []

    def make(statuses: list[int] | None = None) -> Hook:
        hooks.append(Hook(statuses))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


async def until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into {where}"


def redis_dump(port: int) -> str:
    """Every value in the Redis, as text, to look for leaked secrets."""
    r = redis_sync.Redis(port=port)
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "string":
            out.append(repr(r.get(key)))
        elif kind == "list":
            out.append(repr(r.lrange(key, 0, -1)))
        elif kind == "hash":
            out.append(repr(r.hgetall(key)))
        elif kind == "stream":
            out.append(repr(r.xrange(key)))
        elif kind in ("set", "zset"):
            out.append(repr(r.smembers(key) if kind == "set" else r.zrange(key, 0, -1)))
    return "\n".join(out)


def test_redact_hides_every_part_of_the_webhook_secret():
    settings = load_settings(webhook_url=f"https://user:pw-secret-1@hooks.example.com/services/{PATH_TOKEN}?token={QUERY_TOKEN}",
                             webhook_headers=json.dumps({"Authorization": f"Bearer {HEADER_TOKEN}"}))
    message = (f"Server error '500' for url '{settings.webhook_url}' / path /services/{PATH_TOKEN} / "
               f"header Bearer {HEADER_TOKEN} / encoded {PATH_TOKEN.replace('-', '%2D')}")
    cleaned = notify.redact(message, settings)
    assert_no_secret(cleaned, "the redacted text")
    assert "pw-secret-1" not in cleaned and "***" in cleaned
    assert notify.safe_url(settings.webhook_url) == "https://hooks.example.com/***"
    assert "webhook_url" not in repr(settings)  # the settings' repr never shows it


async def test_workers_post_run_finished_and_flagged_items_and_never_log_the_token(
        redis_proc, worker_procs, hook, tmp_path):
    h = hook()
    df = pd.DataFrame({"content_id": ["a", "b", "c", "d"],
                       "text": ["If you show up at my house again I will break your legs.", "lovely weather today",
                                "Meet me after class, I am going to hurt you.", "great match last night"]})
    handle = await enqueue_dataframe_async(df, bundled_prompt(), redis_url=redis_proc.url, run_id="notified",
                                           cache="off", progress=False)
    worker = worker_procs(redis_proc.url, "--burst", "-v", env={**h.env, "HARNESS_NOTIFY_CATEGORIES": "V,SH"})
    assert worker.wait(60) == 0
    verdicts = await handle.store.verdicts("notified")
    await handle.close()
    await until(lambda: h.accepted("run_finished"), 10, "the run-finished webhook")
    finished = h.accepted("run_finished")
    assert len(finished) == 1
    body = finished[0]["body"]
    assert body["text"].startswith("harness: run notified finished: 4/4 items judged")
    assert body["harness"]["data"]["summary"]["outcomes"] == {"ok": 4}
    assert finished[0]["headers"]["Authorization"] == f"Bearer {HEADER_TOKEN}"
    assert finished[0]["path"] == f"/hooks/{PATH_TOKEN}?token={QUERY_TOKEN}"
    flagged_v = sorted(cid for cid, v in verdicts.items() if v.categories.get("V") or v.categories.get("SH"))
    assert flagged_v, "the test needs at least one item flagged V"
    await until(lambda: len(h.accepted("item_flagged")) == len(flagged_v), 10, "item-flagged webhooks")
    assert sorted(r["body"]["harness"]["content_id"] for r in h.accepted("item_flagged")) == flagged_v
    ids = [r["headers"]["X-Harness-Notification-Id"] for r in h.accepted()]
    assert len(ids) == len(set(ids))
    log = (tmp_path / "worker-0.log").read_text()
    assert "send_notification" in log and "HTTP Request: POST" in log  # it did log, at INFO, redacted
    assert_no_secret(log, "the worker log")
    assert_no_secret(redis_dump(redis_proc.port), "Redis (jobs, events, notification lists)")


async def test_a_webhook_that_fails_twice_then_succeeds_gets_exactly_one_notification(
        redis_proc, worker_procs, hook, tmp_path):
    h = hook([500, 503])
    pool = await connect(redis_proc.url)
    note = notify.make_note("run_finished", "harness: run x finished", run_id="x", note_id="fail-twice")
    await pool.enqueue_job("send_notification", note, "webhook", _job_id="notify:fail-twice:webhook")
    worker = worker_procs(redis_proc.url, "--burst", "-v", env=h.env)
    assert worker.wait(60) == 0
    sent = [json.loads(x) for x in await pool.lrange(notify.SENT_KEY, 0, -1)]
    failed = await pool.llen(notify.FAILED_KEY)
    await pool.aclose()
    assert [r["status"] for r in h.requests] == [500, 503, 200]
    assert len(h.accepted()) == 1 and h.accepted()[0]["body"]["harness"]["id"] == "fail-twice"
    assert {r["headers"]["X-Harness-Notification-Id"] for r in h.requests} == {"fail-twice"}
    assert failed == 0 and len(sent) == 1 and sent[0]["tries"] == 3
    log = (tmp_path / "worker-0.log").read_text()
    assert "retrying" in log and "HTTP 500" in log
    assert_no_secret(log, "the worker log")


async def test_a_webhook_that_never_succeeds_is_recorded_not_lost(redis_proc, worker_procs, hook, tmp_path):
    h = hook([500] * 10)
    pool = await connect(redis_proc.url)
    note = notify.make_note("run_stuck", "harness: run y is stuck", run_id="y", note_id="never")
    await pool.enqueue_job("send_notification", note, "webhook", _job_id="notify:never:webhook")
    worker = worker_procs(redis_proc.url, "--burst", env={**h.env, "HARNESS_NOTIFY_MAX_TRIES": "3"})
    assert worker.wait(60) == 0
    failed = [json.loads(x) for x in await pool.lrange(notify.FAILED_KEY, 0, -1)]
    await pool.aclose()
    assert len(h.requests) == 3
    assert len(failed) == 1
    assert failed[0]["note"]["id"] == "never" and failed[0]["tries"] == 3 and failed[0]["channel"] == "webhook"
    assert "HTTP 500" in failed[0]["error"]
    assert_no_secret(json.dumps(failed), "the failed-notifications list")
    log = (tmp_path / "worker-0.log").read_text()
    assert "gave up after 3 tries" in log  # an ERROR line, seen without -v
    assert_no_secret(log, "the worker log")


async def test_inline_notifications_reach_the_webhook_the_notebook_list_and_never_the_log(hook, caplog):
    caplog.set_level(logging.DEBUG)
    h = hook([500])
    settings = load_settings(cache_mode="off", retry_base_s=0.01, webhook_url=h.url, notify_categories=("V",),
                             webhook_headers=json.dumps({"Authorization": f"Bearer {HEADER_TOKEN}"}))
    notify.DISPLAYED.clear()
    df = pd.DataFrame({"content_id": ["a", "b"],
                       "text": ["If you show up at my house again I will break your legs.", "lovely weather today"]})
    events = []
    result = await run_inline(df, bundled_prompt(), settings=settings, progress=False, notify=True,
                              on_event=events.append)
    assert result.verdicts["a"].categories["V"]
    kinds = [n["kind"] for n in notify.DISPLAYED]
    assert kinds.count("item_flagged") == 1 and kinds.count("run_finished") == 1
    assert {r["body"]["harness"]["kind"] for r in h.accepted()} == {"item_flagged", "run_finished"}
    assert len(h.requests) == 3  # one failure, retried, plus the second notification
    assert "HTTP Request: POST" in caplog.text  # httpx logged the request, with the URL redacted
    assert_no_secret(caplog.text, "the log")
    assert_no_secret(json.dumps([e.to_dict() for e in events]), "the events")


async def test_a_run_without_notify_sends_nothing_inline(hook):
    h = hook()
    notify.DISPLAYED.clear()
    settings = load_settings(cache_mode="off", webhook_url=h.url, notify_categories=("V",))
    await run_inline(pd.DataFrame({"content_id": ["a"], "text": ["I will break your legs."]}), bundled_prompt(),
                     settings=settings, progress=False)
    assert not h.requests and not notify.DISPLAYED
