"""Settings from the environment, read in one place so every runner sees the same values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

OFFLINE_ENDPOINT = "offline://harness"
OFFLINE_MODEL = "harness-offline-keywords-v1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = PROJECT_ROOT / "datasets" / "mini_moderation.jsonl"
CACHE_MODES = ("use", "refresh", "off")


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: expected a number, got {raw!r}") from exc


def _int(name: str, default: int) -> int:
    value = _float(name, default)
    if value != int(value) or value < 0:
        raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Resolved settings. `base_url` None means the offline model answers."""

    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str = OFFLINE_MODEL
    redis_url: str | None = None
    cache_dir: Path = PROJECT_ROOT / ".harness" / "cache"
    cache_mode: str = "use"
    llm_timeout_s: float = 60.0
    max_tries: int = 5
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    concurrency: int = 16
    offline_delay_ms: float = 0.0  # pause between the offline model's chunks, to watch it stream

    @property
    def endpoint(self) -> str:
        """What the cache key and reports call the endpoint; never carries a secret."""
        return (self.base_url or OFFLINE_ENDPOINT).rstrip("/")

    @property
    def offline(self) -> bool:
        return self.base_url is None

    def with_cache_mode(self, mode: str) -> Settings:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache mode: expected one of {CACHE_MODES}, got {mode!r}")
        return replace(self, cache_mode=mode)


def load_settings(**overrides: object) -> Settings:
    """Read HARNESS_* / OPENAI_* / REDIS_URL; keyword overrides win over the environment."""
    base_url = os.environ.get("OPENAI_BASE_URL", "").strip() or None
    env = dict(
        base_url=base_url,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
        model=os.environ.get("HARNESS_MODEL", "").strip() or (OFFLINE_MODEL if base_url is None else "gpt-4o-mini"),
        redis_url=os.environ.get("REDIS_URL", "").strip() or None,
        cache_dir=Path(os.environ.get("HARNESS_CACHE_DIR", "").strip() or PROJECT_ROOT / ".harness" / "cache"),
        cache_mode=os.environ.get("HARNESS_CACHE_MODE", "").strip() or "use",
        llm_timeout_s=_float("HARNESS_LLM_TIMEOUT", 60.0),
        max_tries=_int("HARNESS_MAX_TRIES", 5),
        retry_base_s=_float("HARNESS_RETRY_BASE", 1.0),
        retry_cap_s=_float("HARNESS_RETRY_CAP", 60.0),
        concurrency=_int("HARNESS_CONCURRENCY", 16),
        offline_delay_ms=_float("HARNESS_OFFLINE_DELAY_MS", 0.0),
    )
    env.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings(**env)  # type: ignore[arg-type]
    if s.cache_mode not in CACHE_MODES:
        raise ValueError(f"cache mode: expected one of {CACHE_MODES}, got {s.cache_mode!r}")
    if s.max_tries < 1:
        raise ValueError("HARNESS_MAX_TRIES: must be at least 1")
    if s.concurrency < 1:
        raise ValueError("concurrency: must be at least 1")
    return s
