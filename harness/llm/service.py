"""The one path every model call takes: openai.AsyncOpenAI, streamed, behind the response cache.

With no OPENAI_BASE_URL the client talks to the offline model through an in-process transport,
so the offline baseline exercises exactly the code a real endpoint does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import openai

from harness.config import Settings
from harness.llm.cache import CachedAnswer, ResponseCache, cache_key, cache_key_fields
from harness.llm.errors import TransientLLMError, classify, redacted
from harness.schema import PromptSpec, Usage

DeltaCallback = Callable[[str], Awaitable[None]]


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    refusal: str | None = None
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    latency_s: float = 0.0
    cache_key: str | None = None


def build_client(settings: Settings) -> openai.AsyncOpenAI:
    """A client for the configured endpoint, or for the offline model when none is set.

    The client's own retries are off: retries belong to the task (Arq's Retry), where they
    are visible as events and bounded by max_tries.
    """
    if settings.offline:
        from harness.llm.inprocess import offline_client
        from harness.llm.openai_app import FaultConfig

        faults = FaultConfig(token_delay_ms=settings.offline_delay_ms) if settings.offline_delay_ms else None
        return offline_client(faults, timeout=settings.llm_timeout_s, max_retries=0)
    return openai.AsyncOpenAI(
        base_url=settings.base_url,
        api_key=settings.api_key or "none",
        timeout=settings.llm_timeout_s,
        max_retries=0,
    )


class LLMService:
    """Streams chat completions through the cache. One instance per worker or inline run."""

    def __init__(self, settings: Settings, client: openai.AsyncOpenAI | None = None,
                 cache: ResponseCache | None = None):
        self.settings = settings
        self.client = client or build_client(settings)
        self._cache = cache
        self.hits = 0
        self.misses = 0

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            try:
                self._cache = ResponseCache(self.settings.cache_dir)
            except Exception as exc:  # noqa: BLE001 - OSError, sqlite errors: all mean an unusable folder
                raise ValueError(f"HARNESS_CACHE_DIR {self.settings.cache_dir}: cannot hold the response cache "
                                 f"({type(exc).__name__}: {exc})") from exc
        return self._cache

    def check_cache(self) -> None:
        """Open the cache now, so an unusable folder stops a run before any item, not on each."""
        if self.settings.cache_mode != "off":
            _ = self.cache

    async def forget(self, key: str | None) -> None:
        """Drop an answer from the cache (one the task could not parse is not worth replaying)."""
        if key is not None and self.settings.cache_mode != "off":
            await asyncio.to_thread(self.cache.delete, key)

    async def complete(
        self,
        spec: PromptSpec,
        messages: list[dict[str, str]],
        *,
        on_delta: DeltaCallback | None = None,
        cache_mode: str | None = None,
        sample_index: int = 0,
    ) -> Completion:
        """One streamed answer. Raises TransientLLMError or FatalLLMError; never caches errors."""
        mode = cache_mode or self.settings.cache_mode
        model = spec.model or self.settings.model
        params = spec.sampling()
        key = None
        if mode != "off":
            fields = cache_key_fields(endpoint=self.settings.endpoint, model=model, messages=messages,
                                      params=params, sample_index=sample_index)
            key = cache_key(fields)
            if mode == "use":
                hit = await asyncio.to_thread(self.cache.get, key)
                if hit is not None:
                    self.hits += 1
                    start = time.perf_counter()
                    if on_delta is not None:
                        for chunk in hit.chunks:
                            await on_delta(chunk)
                    return Completion(hit.text, hit.finish_reason, hit.refusal, hit.usage, cached=True,
                                      latency_s=time.perf_counter() - start, cache_key=key)
        self.misses += 1
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.llm_timeout_s):
                answer = await self._stream(model, messages, params, on_delta)
        except Exception as exc:  # noqa: BLE001 - classed below, nothing swallowed
            # `from None`: the original may quote the API key, and tracebacks end up in logs
            raise redacted(classify(exc), (self.settings.api_key,)) from None
        latency = time.perf_counter() - start
        if key is not None:
            answer.key_fields = fields
            await asyncio.to_thread(self.cache.set, key, answer)
        return Completion(answer.text, answer.finish_reason, answer.refusal, answer.usage,
                          cached=False, latency_s=latency, cache_key=key)

    async def _stream(self, model: str, messages: list[dict[str, str]], params: dict,
                      on_delta: DeltaCallback | None) -> CachedAnswer:
        stream = await self.client.chat.completions.create(
            model=model, messages=messages, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, **params,
        )
        chunks: list[str] = []
        refusal: list[str] = []
        finish_reason: str | None = None
        usage = Usage()
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = Usage(chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0,
                                  chunk.usage.total_tokens or 0)
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        chunks.append(delta.content)
                        if on_delta is not None:
                            await on_delta(delta.content)
                    if delta is not None and getattr(delta, "refusal", None):
                        refusal.append(delta.refusal)  # type: ignore[arg-type]
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
        if finish_reason is None:
            raise TransientLLMError("stream ended before the model finished (no finish_reason)")
        return CachedAnswer(chunks=chunks, finish_reason=finish_reason,
                            refusal="".join(refusal) or None, usage=usage)

    async def aclose(self) -> None:
        await self.client.close()
        if self._cache is not None:
            self._cache.close()
