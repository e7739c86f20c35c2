"""The response cache: one diskcache entry per distinct model request.

The key hashes everything that changes the answer (endpoint, model, messages, sampling
parameters, response format, sample index) and nothing secret: the API key never enters it.
An entry keeps the streamed chunks, so a hit replays the same commentary a miss showed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import diskcache

from harness.schema import Usage

CACHE_FORMAT = 1


@dataclass
class CachedAnswer:
    chunks: list[str]
    finish_reason: str | None
    refusal: str | None = None
    usage: Usage = field(default_factory=Usage)
    key_fields: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def cache_key_fields(
    *, endpoint: str, model: str, messages: list[dict[str, str]], params: dict[str, Any], sample_index: int = 0
) -> dict[str, Any]:
    """The explained key: what a request is made of, as stored next to the answer."""
    return {
        "format": CACHE_FORMAT,
        "endpoint": endpoint,
        "model": model,
        "messages": messages,
        "params": params,
        "sample_index": sample_index,
    }


def cache_key(fields: dict[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache:
    """A thin wrapper over diskcache.Cache that stores CachedAnswer as JSON text."""

    def __init__(self, directory: Path | str, *, size_limit_bytes: int = 4 * 2**30):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit_bytes)

    def get(self, key: str) -> CachedAnswer | None:
        raw = self._cache.get(key)
        if raw is None:
            return None
        try:
            d = json.loads(raw)
            d["usage"] = Usage(**d.get("usage", {}))
            return CachedAnswer(**d)
        except (ValueError, TypeError):
            self._cache.delete(key)  # an unreadable entry is a miss, never an error
            return None

    def set(self, key: str, answer: CachedAnswer, *, expire_s: float | None = None) -> None:
        answer.created = answer.created or time.time()
        self._cache.set(key, json.dumps(asdict(answer), ensure_ascii=False), expire=expire_s)

    def delete(self, key: str) -> None:
        self._cache.delete(key)

    def __len__(self) -> int:
        return len(self._cache)

    def volume(self) -> int:
        return int(self._cache.volume())

    def expire(self) -> int:
        return int(self._cache.expire())

    def cull(self) -> int:
        return int(self._cache.cull())

    def clear(self) -> int:
        return int(self._cache.clear())

    def close(self) -> None:
        self._cache.close()
