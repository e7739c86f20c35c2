"""Model errors in two classes, because the runner must decide: try again later, or give up.

Transient: 408, 409, 429, 5xx, timeouts, dropped connections and cut streams. Fatal: auth,
permission, bad request, unknown model. `retry_after` carries the server's Retry-After hint.
"""

from __future__ import annotations

import email.utils
import re
import time

import httpx
import openai

try:  # newer openai releases run on httpx2; its transport errors are the same kind of problem
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError, httpx2.TransportError)
    _TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx2.TimeoutException)
except ImportError:  # pragma: no cover - depends on the installed openai
    _TRANSPORT_ERRORS = (httpx.TransportError,)
    _TIMEOUTS = (httpx.TimeoutException,)


class LLMError(Exception):
    transient: bool = False

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TransientLLMError(LLMError):
    transient = True


class FatalLLMError(LLMError):
    transient = False


TRANSIENT_STATUS = {408, 409, 429}


def parse_retry_after(headers: httpx.Headers | None) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def classify(exc: BaseException) -> LLMError:
    """Map an exception from the openai client (or httpx under it) to a classed LLMError."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, (openai.APITimeoutError, TimeoutError, *_TIMEOUTS)):
        return TransientLLMError(f"model call timed out ({type(exc).__name__})")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = _short(exc.message)
        retry_after = parse_retry_after(exc.response.headers) if exc.response is not None else None
        if status in TRANSIENT_STATUS or status >= 500:
            return TransientLLMError(f"HTTP {status}: {body}", status=status, retry_after=retry_after)
        return FatalLLMError(f"HTTP {status}: {body}", status=status)
    if isinstance(exc, (openai.APIConnectionError, *_TRANSPORT_ERRORS)):
        return TransientLLMError(f"connection problem: {type(exc).__name__}: {_short(str(exc))}")
    if isinstance(exc, openai.APIResponseValidationError):
        return TransientLLMError(f"invalid response from the endpoint: {_short(str(exc))}")
    return FatalLLMError(f"{type(exc).__name__}: {_short(str(exc))}")


_KEYLIKE = re.compile(r"(sk-[A-Za-z0-9_\-*]{4}|Bearer\s+)[A-Za-z0-9_\-.*]{4,}")


def redact(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """Text with any configured secret, and anything shaped like an API key, masked."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEYLIKE.sub(lambda m: m.group(1) + "***", text)


def redacted(error: LLMError, secrets: tuple[str | None, ...]) -> LLMError:
    """The same error with its message redacted (endpoints may echo the key back)."""
    clean = type(error)(redact(str(error), secrets), status=error.status, retry_after=error.retry_after)
    return clean


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
