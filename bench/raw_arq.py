"""The raw-Arq baseline: a function that returns at once, with the harness worker's options."""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

from harness.worker import WorkerSettings as HarnessSettings


async def noop(ctx: dict[str, Any], content_id: str, content_type: str = "text", *, run_id: str = "") -> dict:
    return {"content_id": content_id}


class WorkerSettings:
    functions = [noop]
    job_timeout = HarnessSettings.job_timeout
    keep_result = HarnessSettings.keep_result
    max_jobs = HarnessSettings.max_jobs
    poll_delay = HarnessSettings.poll_delay
    job_serializer = HarnessSettings.job_serializer
    job_deserializer = HarnessSettings.job_deserializer
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
