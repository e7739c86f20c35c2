"""WorkerSettings: the one place Arq worker options live, and `harness worker`'s run loop.

`arq harness.worker.WorkerSettings` works too (set REDIS_URL, or start the embedded Redis with
`harness redis` first). `harness worker` adds what plain Arq lacks: it reconnects when Redis
drops the connection instead of dying, and it picks the embedded Redis when REDIS_URL is unset.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from arq import func
from arq.connections import RedisSettings
from arq.constants import default_queue_name
from arq.worker import create_worker

from harness.config import load_settings
from harness.cron import cache_maintenance, run_summary, watchdog
from harness.cron import cron_jobs as build_cron_jobs
from harness.notify import send_notification
from harness.recovery import after_job_end, on_job_start
from harness.semantic import update_semantic_cache
from harness.serialize import json_deserializer, json_serializer
from harness.tasks import JOB_TIMEOUT_S, KEEP_RESULT_S, moderate_content, shutdown, startup

log = logging.getLogger("harness.worker")
DEFAULT_MAX_JOBS = 100  # LLM jobs mostly wait on the network; Arq's default of 10 starves them


def _settings_redis() -> RedisSettings:
    """REDIS_URL, else a running embedded Redis, else Arq's default (localhost:6379)."""
    url = load_settings().redis_url
    if not url:
        from harness.redis_server import RedisUnavailable, embedded_redis_url

        try:
            url = embedded_redis_url(start=False)
        except RedisUnavailable:
            return RedisSettings()
    return RedisSettings.from_dsn(url)


class WorkerSettings:
    # moderation, the follow-up jobs it enqueues, and the periodic jobs (also runnable on demand:
    # `enqueue_job("watchdog")`); cron_jobs schedule those from HARNESS_CRON_* (see harness/cron.py)
    functions = [moderate_content, update_semantic_cache,
                 func(send_notification, max_tries=load_settings().notify_max_tries),
                 cache_maintenance, watchdog, run_summary]
    cron_jobs = build_cron_jobs(load_settings())
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = on_job_start
    after_job_end = after_job_end
    job_timeout = JOB_TIMEOUT_S  # 300 s; Arq does not retry a job that hits it
    keep_result = KEEP_RESULT_S  # 3600 s; verdicts themselves stay in the harness store
    max_tries = load_settings().max_tries
    max_jobs = DEFAULT_MAX_JOBS
    poll_delay = 0.25
    job_serializer = staticmethod(json_serializer)
    job_deserializer = staticmethod(json_deserializer)
    redis_settings = _settings_redis()


async def run_worker(*, redis_url: str | None = None, burst: bool = False, max_jobs: int | None = None,
                     queue_name: str = default_queue_name, reconnect: bool = True,
                     graceful_timeout_s: float = 60.0) -> int:
    """Run one Arq worker until stopped (or the queue is empty, with burst).

    A lost Redis connection ends Arq's loop; here it is logged in one line and the worker is
    rebuilt after a backoff, so a Redis restart costs a pause, not the worker. Jobs that were
    running when the connection went are re-run via the heartbeat recovery.
    """
    from harness.batch import parse_redis_url
    from harness.redis_server import resolve_redis_url

    url = resolve_redis_url(redis_url)
    redis_settings = parse_redis_url(url)
    from harness.batch import connect

    try:  # a wrong URL or password is a mistake to report, not an outage to wait out
        await (await connect(url)).aclose()
    except ConnectionError as exc:
        print(f"harness worker: {exc}", file=sys.stderr, flush=True)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    delay = 0.5
    while True:
        worker = create_worker(
            WorkerSettings, redis_settings=redis_settings, burst=burst, queue_name=queue_name,
            max_jobs=max_jobs or WorkerSettings.max_jobs, handle_signals=False,
        )
        run = asyncio.create_task(worker.async_run())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper.done() and not run.done():
            log.info("stopping: letting %d running job(s) finish (at most %.0fs)", len(worker.tasks),
                     graceful_timeout_s)
            worker.allow_pick_jobs = False
            pending = list(worker.tasks.values())
            if pending:
                await asyncio.wait(pending, timeout=graceful_timeout_s)
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await _close(worker)
            return 0
        stopper.cancel()
        exc = run.exception()
        await _close(worker)
        if exc is None:
            return 0
        if not reconnect or not _is_connection_error(exc):
            print(f"harness worker: stopped by {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"harness worker: lost Redis ({type(exc).__name__}: {exc}); reconnecting in {delay:.1f}s",
              file=sys.stderr, flush=True)
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return 0
        except TimeoutError:
            delay = min(delay * 2, 10.0)


def _is_connection_error(exc: BaseException) -> bool:
    """True when the failure, or anything in its cause chain, is a lost or refused connection.

    redis-py reports a connection lost inside a WATCH as a WatchError, so that counts too.
    """
    import redis.exceptions

    kinds = (ConnectionError, OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
             redis.exceptions.BusyLoadingError)
    fatal = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
             redis.exceptions.ResponseError)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, fatal):  # a changed password will not come back by waiting
            return False
        if isinstance(current, kinds):
            return True
        if isinstance(current, redis.exceptions.WatchError) and "ConnectionError" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


async def _close(worker: Any) -> None:
    """Close an Arq worker; when its close fails on a dead connection, still run our shutdown.

    Arq skips on_shutdown if its own cleanup raises, which would leave this worker's heartbeat
    beating for jobs it no longer runs, so they would never be recovered.
    """
    try:
        await asyncio.wait_for(worker.close(), 10)
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - a dead connection fails the close
        current = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and current is not None and current.cancelling():
            raise  # we are being stopped ourselves; a job's own cancellation is not ours to pass on
        log.debug("closing the worker: %r", exc)
    await shutdown(worker.ctx)
