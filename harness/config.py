"""Settings from the environment, read in one place so every runner sees the same values."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

OFFLINE_ENDPOINT = "offline://harness"
OFFLINE_MODEL = "harness-offline-keywords-v1"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = PROJECT_ROOT / "datasets" / "mini_moderation.jsonl"
CACHE_MODES = ("use", "refresh", "off")


def _without_credentials(url: str) -> str:
    """A URL without user:password@, which must not reach cache keys, logs or reports."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def parse_schedule(spec: str) -> tuple[int, str] | None:
    """'30s' / '5m' / '1h' as (N, unit), or None for 'off'; N must divide the minute, hour or day."""
    text = spec.strip().lower()
    if text in ("off", "0", "none", "never", ""):
        return None
    m = re.fullmatch(r"(\d+)\s*(s|sec|m|min|h|hour)", text)
    if not m:
        raise ValueError(f"cron schedule {spec!r}: expected <N>s, <N>m, <N>h or off")
    n, unit = int(m.group(1)), m.group(2)[0]
    limit = 24 if unit == "h" else 60
    if n < 1 or limit % n:
        raise ValueError(f"cron schedule {spec!r}: N must divide {limit}")
    return n, unit


def check_threshold(value: object, name: str = "semantic threshold") -> float:
    """A similarity threshold in (0, 1]; NaN, infinities and other types are refused up front."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
    return float(value)


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


def _names(name: str) -> tuple[str, ...]:
    """A comma-separated list from the environment ("a, b,c"), empty when unset."""
    return tuple(x.strip() for x in os.environ.get(name, "").split(",") if x.strip())


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
    # semantic cache (harness/semantic.py, harness/embeddings.py); a run opts in with `semantic_cache`
    semantic_threshold: float = 0.9  # cosine similarity a near-duplicate must reach to reuse a verdict
    embedding_model: str | None = None  # None: the offline hashed char-3-gram embedding
    # notifications (harness/notify.py); the webhook URL and headers are secrets, never logged
    webhook_url: str | None = field(default=None, repr=False)
    webhook_headers: str | None = field(default=None, repr=False)  # JSON object of extra headers
    notify_channels: tuple[str, ...] = ("log", "webhook")  # webhook only when a URL is set
    notify_on: tuple[str, ...] = ("run_finished", "item_flagged", "run_stuck", "run_summary")
    notify_categories: tuple[str, ...] = ()
    notify_max_tries: int = 5
    # periodic jobs (harness/cron.py): "30s", "5m", "1h" or "off"
    cron_maintenance: str = "1h"
    cron_watchdog: str = "1m"
    cron_summary: str = "15m"
    watchdog_min_age_s: float = 120.0  # a run younger than this is not checked for lost jobs
    watchdog_max_requeues: int = 3  # re-enqueues per item before the watchdog only reports it
    events_retention_s: float = 7 * 86400.0  # cache maintenance trims older events

    @property
    def endpoint(self) -> str:
        """What the cache key and reports call the endpoint; never carries a secret."""
        return _without_credentials(self.base_url or OFFLINE_ENDPOINT).rstrip("/")

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
        semantic_threshold=_float("HARNESS_SEMANTIC_THRESHOLD", 0.9),
        embedding_model=os.environ.get("HARNESS_EMBEDDING_MODEL", "").strip() or None,
        webhook_url=os.environ.get("HARNESS_WEBHOOK_URL", "").strip() or None,
        webhook_headers=os.environ.get("HARNESS_WEBHOOK_HEADERS", "").strip() or None,
        notify_channels=_names("HARNESS_NOTIFY_CHANNELS") or ("log", "webhook"),
        notify_on=_names("HARNESS_NOTIFY_ON") or ("run_finished", "item_flagged", "run_stuck", "run_summary"),
        notify_categories=_names("HARNESS_NOTIFY_CATEGORIES"),
        notify_max_tries=_int("HARNESS_NOTIFY_MAX_TRIES", 5),
        cron_maintenance=os.environ.get("HARNESS_CRON_MAINTENANCE", "").strip() or "1h",
        cron_watchdog=os.environ.get("HARNESS_CRON_WATCHDOG", "").strip() or "1m",
        cron_summary=os.environ.get("HARNESS_CRON_SUMMARY", "").strip() or "15m",
        watchdog_min_age_s=_float("HARNESS_WATCHDOG_MIN_AGE", 120.0),
        watchdog_max_requeues=_int("HARNESS_WATCHDOG_MAX_REQUEUES", 3),
        events_retention_s=_float("HARNESS_EVENTS_RETENTION", 7 * 86400.0),
    )
    env.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings(**env)  # type: ignore[arg-type]
    if s.cache_mode not in CACHE_MODES:
        raise ValueError(f"cache mode: expected one of {CACHE_MODES}, got {s.cache_mode!r}")
    if s.max_tries < 1:
        raise ValueError("HARNESS_MAX_TRIES: must be at least 1")
    if s.concurrency < 1:
        raise ValueError("concurrency: must be at least 1")
    check_threshold(s.semantic_threshold, "HARNESS_SEMANTIC_THRESHOLD")
    for name, spec in (("HARNESS_CRON_MAINTENANCE", s.cron_maintenance), ("HARNESS_CRON_WATCHDOG", s.cron_watchdog),
                       ("HARNESS_CRON_SUMMARY", s.cron_summary)):
        try:
            parse_schedule(spec)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if s.notify_max_tries < 1:
        raise ValueError("HARNESS_NOTIFY_MAX_TRIES: must be at least 1")
    _check_notifications(s)
    return s


NOTIFY_CHANNELS = ("webhook", "log", "display")
NOTIFY_TRIGGERS = ("run_finished", "item_flagged", "run_stuck", "run_summary")


def _check_notifications(s: Settings) -> None:
    """Refuse notification settings that would silently never fire; messages never quote secrets."""
    import json
    from urllib.parse import urlsplit

    for name, values, known in (("HARNESS_NOTIFY_CHANNELS", s.notify_channels, NOTIFY_CHANNELS),
                                ("HARNESS_NOTIFY_ON", s.notify_on, NOTIFY_TRIGGERS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ValueError(f"{name}: unknown {unknown}; expected some of {list(known)}")
    bad = [c for c in s.notify_categories if not re.fullmatch(r"[A-Z][A-Z0-9_]*", c)]
    if bad:
        raise ValueError(f"HARNESS_NOTIFY_CATEGORIES: {bad} are not category codes (upper case, e.g. S,SH,V2)")
    if s.webhook_url:
        try:
            parts = urlsplit(s.webhook_url)
            _ = parts.port  # raises on a port out of range
        except ValueError:
            raise ValueError("HARNESS_WEBHOOK_URL: not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("HARNESS_WEBHOOK_URL: expected an http:// or https:// URL with a host")
    if s.webhook_headers:
        try:
            headers = json.loads(s.webhook_headers)
        except ValueError:
            headers = None
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ValueError("HARNESS_WEBHOOK_HEADERS: expected a JSON object of header names to text values")
