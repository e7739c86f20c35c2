"""An OpenAI-compatible ASGI app that answers with the offline model and injects faults on demand.

Why: the harness's retry, timeout, streaming and parsing code must be exercised against the real
`openai` client and real wire format, without a network or a paid endpoint. The same app runs
in-process (see `inprocess.py`) and as a real local server (see `server.py`), so a test can
choose between speed and a real socket.

Raw ASGI on purpose: no web framework to install, and full control over how a response breaks
(a stream "cut" is an exception raised after part of the body was sent, which uvicorn turns into
a dropped connection and the in-process transport into `httpx.RemoteProtocolError`).

Routes: POST /v1/chat/completions (stream and non-stream), GET /v1/models, POST /v1/embeddings,
GET /stats (counters), GET /health. The `/v1` prefix is optional. Faults apply to chat
completions only; embeddings and models only honour `api_key` and `latency_ms`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import re
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

from harness.config import OFFLINE_MODEL
from harness.llm.offline_model import answer_text

__all__ = [
    "ASGIApp",
    "EMBEDDING_DIMS",
    "FAULT_KINDS",
    "FaultConfig",
    "OfflineOpenAIApp",
    "StreamCut",
    "create_app",
    "embed",
    "request_key",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FAULT_KINDS: tuple[str, ...] = ("429", "500", "timeout", "cut", "malformed", "401")
EMBEDDING_DIMS = 256
WORDS_PER_CHUNK = 4  # streamed content granularity
MAX_BODY_BYTES = 64 * 1024 * 1024
FINGERPRINT = "fp_harness_offline"


class StreamCut(Exception):
    """Raised inside the app to drop the connection mid-body (the injected "cut" fault)."""


@dataclass
class FaultConfig:
    """Which faults the app injects; rates are fractions of chat-completion requests."""

    latency_ms: float = 0.0  # delay before the first byte
    token_delay_ms: float = 0.0  # delay between streamed chunks
    rate_429: float = 0.0  # answered 429 with a Retry-After header
    retry_after_s: float = 1.0
    rate_500: float = 0.0  # answered 500 with a JSON error body
    rate_timeout: float = 0.0  # hang for `hang_s` before answering
    hang_s: float = 30.0
    rate_cut: float = 0.0  # body dropped after about half of it, no [DONE]
    rate_malformed: float = 0.0  # garbage text with no JSON verdict
    fail_first: int = 0  # first N attempts of each distinct request get `fail_kind`
    fail_kind: str = "429"  # one of FAULT_KINDS
    api_key: str | None = None  # when set, other bearer tokens get 401
    seed: int = 0  # rates are drawn from random.Random(seed), one draw per chat request

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("rate_") and not (0.0 <= float(value) <= 1.0):
                raise ValueError(f"{f.name}: expected a fraction 0..1, got {value!r}")
            if f.name.endswith(("_ms", "_s")) and not (float(value) >= 0.0 and math.isfinite(float(value))):
                raise ValueError(f"{f.name}: expected a finite number >= 0, got {value!r}")
        if int(self.fail_first) < 0:
            raise ValueError(f"fail_first: expected >= 0, got {self.fail_first!r}")
        self.fail_kind = str(self.fail_kind)
        if self.fail_kind not in FAULT_KINDS:
            raise ValueError(f"fail_kind: expected one of {FAULT_KINDS}, got {self.fail_kind!r}")
        if sum(float(getattr(self, n)) for n in _RATE_FIELDS.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")


_RATE_FIELDS = {"429": "rate_429", "500": "rate_500", "timeout": "rate_timeout",
                "cut": "rate_cut", "malformed": "rate_malformed"}


def request_key(model: str, messages: Any) -> str:
    """Identity of a request for `fail_first`: a hash of model and messages."""
    blob = json.dumps({"model": model, "messages": messages}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def embed(text: str, dims: int = EMBEDDING_DIMS) -> list[float]:
    """Hashed character-3-gram embedding, L2-normalised (all zeros for text with no 3-gram)."""
    s = f" {text.lower()} ".encode("utf-8", "surrogatepass")
    vec = [0.0] * EMBEDDING_DIMS
    view = memoryview(s)
    for i in range(len(s) - 2):
        h = zlib.crc32(view[i : i + 3])
        vec[h % EMBEDDING_DIMS] += 1.0 if (h >> 16) & 1 else -1.0
    vec = vec[:dims]
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm else vec


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> int:
    return len(text.split())


def _garbage(key: str) -> str:
    """A deterministic answer with no JSON verdict, like a model that lost the format."""
    words = ("verdict", "content", "moderation", "maybe", "the", "flag", "category", "unclear",
             "analysis", "lorem", "ipsum", "policy", "review", "signal", "###", "~~")
    rng = random.Random(key)
    body = " ".join(rng.choice(words) for _ in range(24))
    return f"Commentary: the content was looked at and then {body} ... [output garbled]"


def _error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _BadRequest(Exception):
    pass


class OfflineOpenAIApp:
    """The ASGI callable; `stats` holds live counters (also served at GET /stats)."""

    def __init__(self, faults: FaultConfig | None = None) -> None:
        self.faults = faults or FaultConfig()
        self.rng = random.Random(self.faults.seed)
        self.attempts: dict[str, int] = {}
        self.stats: dict[str, Any] = {
            "requests": 0,
            "chat_completions": 0,
            "streams": 0,
            "completed": 0,
            "embeddings": 0,
            "models": 0,
            "bad_requests": 0,
            "not_found": 0,
            "disconnects": 0,
            "faults": dict.fromkeys(FAULT_KINDS, 0),
        }
        self._counter = 0

    # ---- ASGI entry -------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/").rstrip("/") or "/"
        method = scope.get("method", "GET").upper()
        body = await self._read_body(receive)
        if path in ("/stats", "/health"):
            data = self.stats if path == "/stats" else {"ok": True}
            await _send_json(send, 200, data)
            return
        self.stats["requests"] += 1
        if path.startswith("/v1/"):
            path = path[3:]
        routes = {"/chat/completions": "POST", "/embeddings": "POST", "/models": "GET"}
        if path not in routes:
            self.stats["not_found"] += 1
            await _send_json(send, 404, _error_body(f"Unknown path {scope.get('path')!r}", "invalid_request_error", "not_found"))
            return
        if method != routes[path]:
            await _send_json(send, 405, _error_body(f"Method {method} not allowed", "invalid_request_error", "method_not_allowed"))
            return
        if body is None:
            self.stats["bad_requests"] += 1
            await _send_json(send, 413, _error_body("Request body too large", "invalid_request_error"))
            return
        if not self._authorised(scope):
            self.stats["faults"]["401"] += 1
            # echoes the key it was given, as careless proxies do: clients must not pass it on
            await _send_json(send, 401, _error_body(f"Incorrect API key provided: {self._bearer(scope)}",
                                                    "invalid_request_error", "invalid_api_key"))
            return
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            if path == "/models":
                self.stats["models"] += 1
                await self._models(send, watcher)
                return
            try:
                payload = _json_object(body)
                if path == "/embeddings":
                    await self._embeddings(payload, send, watcher)
                else:
                    await self._chat(payload, send, watcher)
            except _BadRequest as exc:
                self.stats["bad_requests"] += 1
                await _send_json(send, 400, _error_body(str(exc), "invalid_request_error", "invalid_request"))
        finally:
            watcher.cancel()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY_BYTES:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks) if size <= MAX_BODY_BYTES else None

    @staticmethod
    def _bearer(scope: Scope) -> str:
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                return value.decode("utf-8", "replace").removeprefix("Bearer ")
        return ""

    def _authorised(self, scope: Scope) -> bool:
        if self.faults.api_key is None:
            return True
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                return value == f"Bearer {self.faults.api_key}".encode("utf-8", "surrogateescape")
        return False

    async def _pause(self, seconds: float, watcher: asyncio.Future[None]) -> bool:
        """Sleep, returning True early if the client went away."""
        if seconds <= 0:
            return watcher.done()
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        if done:
            self.stats["disconnects"] += 1
        return bool(done)

    def _pick_fault(self, model: str, messages: list[Any]) -> str | None:
        f = self.faults
        draw = self.rng.random()  # exactly one draw per chat request keeps runs reproducible
        if f.fail_first > 0:
            key = request_key(model, messages)
            n = self.attempts[key] = self.attempts.get(key, 0) + 1
            if n <= f.fail_first:
                return f.fail_kind
        edge = 0.0
        for kind, name in _RATE_FIELDS.items():
            edge += float(getattr(f, name))
            if draw < edge:
                return kind
        return None

    # ---- routes -----------------------------------------------------------------------------
    async def _models(self, send: Send, watcher: asyncio.Future[None]) -> None:
        if await self._pause(self.faults.latency_ms / 1000, watcher):
            return
        data = [{"id": OFFLINE_MODEL, "object": "model", "created": 0, "owned_by": "harness"}]
        await _send_json(send, 200, {"object": "list", "data": data})

    async def _embeddings(self, payload: dict[str, Any], send: Send, watcher: asyncio.Future[None]) -> None:
        model = str(payload.get("model") or OFFLINE_MODEL)
        raw = payload.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw:
            if all(isinstance(x, str) for x in raw):
                inputs = list(raw)
            elif all(isinstance(x, int) for x in raw):  # one pre-tokenised input
                inputs = [" ".join(map(str, raw))]
            elif all(isinstance(x, list) and all(isinstance(t, int) for t in x) for x in raw):
                inputs = [" ".join(map(str, x)) for x in raw]
            else:
                raise _BadRequest("'input' must be a string or a list of strings")
        else:
            raise _BadRequest("'input' is required: a string or a non-empty list of strings")
        dims = payload.get("dimensions") or EMBEDDING_DIMS
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= EMBEDDING_DIMS:
            raise _BadRequest(f"'dimensions' must be an integer 1..{EMBEDDING_DIMS}")
        fmt = payload.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise _BadRequest("'encoding_format' must be 'float' or 'base64'")
        self.stats["embeddings"] += 1
        if await self._pause(self.faults.latency_ms / 1000, watcher):
            return
        data = []
        for i, text in enumerate(inputs):
            vec = embed(text, dims)
            value: Any = vec
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": value})
        n = sum(_tokens(t) for t in inputs)
        await _send_json(send, 200, {"object": "list", "data": data, "model": model,
                                     "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def _chat(self, payload: dict[str, Any], send: Send, watcher: asyncio.Future[None]) -> None:
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' is required and must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise _BadRequest(f"messages[{i}] must be an object with a 'role'")
            if m.get("content") is not None and not isinstance(m.get("content"), str | list):
                raise _BadRequest(f"messages[{i}].content must be a string or a list of parts")
        model = payload.get("model")
        model = model if isinstance(model, str) and model else OFFLINE_MODEL
        stream = bool(payload.get("stream"))
        options = payload.get("stream_options")
        include_usage = stream and isinstance(options, dict) and bool(options.get("include_usage"))
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        fmt = payload.get("response_format")
        json_only = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")

        self.stats["chat_completions"] += 1
        if stream:
            self.stats["streams"] += 1
        fault = self._pick_fault(model, messages)
        if fault is not None:
            self.stats["faults"][fault] += 1
        self._counter += 1
        key = request_key(model, messages)
        completion_id = f"chatcmpl-{hashlib.sha256(f'{key}:{self._counter}'.encode()).hexdigest()[:24]}"

        if await self._pause(self.faults.latency_ms / 1000, watcher):
            return
        if fault == "429":
            retry = self.faults.retry_after_s
            headers = [(b"retry-after", _seconds(retry).encode()),
                       (b"retry-after-ms", str(int(round(retry * 1000))).encode())]
            await _send_json(send, 429, _error_body(
                "Rate limit reached (injected fault). Please retry after a short wait.",
                "requests", "rate_limit_exceeded"), headers)
            return
        if fault == "500":
            await _send_json(send, 500, _error_body(
                "The server had an error while processing your request (injected fault).", "server_error"))
            return
        if fault == "401":
            await _send_json(send, 401, _error_body("Incorrect API key provided (injected fault).",
                                                    "invalid_request_error", "invalid_api_key"))
            return
        if fault == "timeout" and await self._pause(self.faults.hang_s, watcher):
            return

        content = _garbage(key) if fault == "malformed" else answer_text(messages)
        if json_only and fault != "malformed":
            content = content.rsplit("\n", 1)[-1]
        words = re.findall(r"\s*\S+", content)
        finish = "stop"
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
            words, finish = words[:limit], "length"
            content = "".join(words)
        prompt_tokens = sum(_tokens(_message_text(m)) + 3 for m in messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        base = {"id": completion_id, "created": int(time.time()), "model": model,
                "system_fingerprint": FINGERPRINT}
        if stream:
            pieces = ["".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]
            await self._stream(send, watcher, base, pieces, finish, usage if include_usage else None,
                               cut=fault == "cut")
            return
        body = {**base, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None, "finish_reason": finish}], "usage": usage}
        if fault == "cut":
            raw = _dumps(body)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": raw[: len(raw) // 2], "more_body": True})
            raise StreamCut("injected fault: response body cut mid-way")
        self.stats["completed"] += 1
        await _send_json(send, 200, body)

    async def _stream(self, send: Send, watcher: asyncio.Future[None], base: dict[str, Any],
                      pieces: list[str], finish: str, usage: dict[str, int] | None, cut: bool) -> None:
        def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            chunk: dict[str, Any] = {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
            if usage is not None:
                chunk["usage"] = None
            return b"data: " + _dumps(chunk) + b"\n\n"

        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-request-id", base["id"].encode())]})
        await send({"type": "http.response.body", "more_body": True,
                    "body": event({"role": "assistant", "content": "", "refusal": None})})
        stop_at = max(1, len(pieces) // 2) if cut else None
        for i, piece in enumerate(pieces):
            if stop_at is not None and i == stop_at:
                raise StreamCut("injected fault: stream cut mid-way")
            if i and await self._pause(self.faults.token_delay_ms / 1000, watcher):
                return
            await send({"type": "http.response.body", "body": event({"content": piece}), "more_body": True})
        if cut:  # too short to cut in the middle: cut before the end instead
            raise StreamCut("injected fault: stream cut before the end")
        tail = event({}, finish)
        if usage is not None:
            tail += b"data: " + _dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                        "usage": usage}) + b"\n\n"
        tail += b"data: [DONE]\n\n"
        self.stats["completed"] += 1
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def create_app(faults: FaultConfig | None = None) -> OfflineOpenAIApp:
    """A fresh app (own counters and random stream) answering with the offline model."""
    return OfflineOpenAIApp(faults)


# ---- helpers ---------------------------------------------------------------------------------
def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:  # includes bad UTF-8
        raise _BadRequest(f"request body is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(payload, dict):
        raise _BadRequest("request body must be a JSON object")
    return payload


async def _send_json(send: Send, status: int, data: Any, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = _dumps(data)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": raw, "more_body": False})


async def _wait_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects (called only after the request body was read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
