"""Backoff for transient model errors: exponential, jittered, and never sooner than Retry-After."""

from __future__ import annotations

import random


def backoff_delay(job_try: int, *, retry_after: float | None = None, base_s: float = 1.0,
                  cap_s: float = 60.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before try `job_try + 1`.

    Full jitter in [0.5, 1.0] x base x 2^(try-1), capped; a server's Retry-After is a floor.
    """
    rng = rng or random
    exp = min(cap_s, base_s * (2 ** max(0, job_try - 1)))
    delay = exp * (0.5 + 0.5 * rng.random())
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap_s * 5))
    return round(delay, 3)
