"""An httpx transport that runs an ASGI app in the same event loop, streaming its body.

Why not `httpx.ASGITransport`: it waits for the whole response before returning, so a client
never sees incremental chunks, token delays collapse into one wait, an exception after a
partial body is raised before any byte is seen, and the client's read timeout is ignored. This
transport behaves like a socket instead:

* the response returns as soon as the app sends `http.response.start`; body chunks reach the
  client one by one as the app sends them;
* an app exception after the response started surfaces while the client iterates, as
  `httpx.RemoteProtocolError` (openai: `APIConnectionError`), like a dropped connection; an
  exception before it started becomes a plain-text 500, as uvicorn does;
* the request's read timeout (from `request.extensions["timeout"]`) applies to the wait for the
  response start and for each chunk and raises `httpx.ReadTimeout` (openai: `APITimeoutError`);
* closing the response early tells the app `http.disconnect` and then cancels it.

asyncio only (the harness runs on asyncio via arq).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai

from harness.llm.openai_app import ASGIApp, FaultConfig, create_app

__all__ = ["OFFLINE_BASE_URL", "InProcessTransport", "offline_client"]

OFFLINE_BASE_URL = "http://offline.harness/v1"

_DONE = object()  # the app returned


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _read_timeout(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    value = timeout.get("read") if isinstance(timeout, dict) else None
    return float(value) if value is not None else None


class _Exchange:
    """One request/response between the client and a running app task."""

    def __init__(self, app: ASGIApp, request: httpx.Request, scope: dict[str, Any], body: bytes) -> None:
        self.request = request
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.timeout = _read_timeout(request)
        self._body: bytes | None = body
        self.task = asyncio.get_running_loop().create_task(self._run(app, scope))

    async def _receive(self) -> dict[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self.closed.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Any) -> None:
        if not self.closed.is_set():  # a gone client drops writes, as a closed socket would
            self.queue.put_nowait(message)

    async def _run(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.queue.put_nowait(_Failed(exc))
        else:
            self.queue.put_nowait(_DONE)

    async def next(self) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), self.timeout)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no data from the app within {self.timeout}s", request=self.request) from None

    async def close(self) -> None:
        self.closed.set()
        if not self.task.done():  # let the app see the disconnect and return on its own
            await asyncio.wait({self.task}, timeout=0.05)
        if not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task})


class _StreamingBody(httpx.AsyncByteStream):
    def __init__(self, exchange: _Exchange) -> None:
        self._x = exchange
        self._ended = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        x = self._x
        while not self._ended:
            message = await x.next()
            if isinstance(message, _Failed) or message is _DONE:
                self._ended = True
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body", request=x.request
                ) from (message.exc if isinstance(message, _Failed) else None)
            if message.get("type") != "http.response.body":
                continue
            chunk = message.get("body", b"")
            if not message.get("more_body", False):
                self._ended = True
            if chunk and x.request.method != "HEAD":
                yield bytes(chunk)

    async def aclose(self) -> None:
        await self._x.close()


class InProcessTransport(httpx.AsyncBaseTransport):
    """Sends requests straight to an ASGI app and streams its response (see module docstring)."""

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 123), root_path: str = "") -> None:
        self.app = app
        self.client = client
        self.root_path = root_path

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or (443 if request.url.scheme == "https" else 80)),
            "client": self.client,
            "root_path": self.root_path,
        }
        exchange = _Exchange(self.app, request, scope, body)
        try:
            while True:
                message = await exchange.next()
                if isinstance(message, _Failed) or message is _DONE:
                    # Like uvicorn: an app that fails before starting a response yields a 500.
                    await exchange.close()
                    return httpx.Response(500, headers={"content-type": "text/plain; charset=utf-8"},
                                          content=b"Internal Server Error", request=request)
                if message.get("type") == "http.response.start":
                    break
        except BaseException:
            await exchange.close()
            raise
        headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        return httpx.Response(int(message["status"]), headers=headers, stream=_StreamingBody(exchange),
                              request=request, extensions={"http_version": b"HTTP/1.1"})


def offline_client(faults: FaultConfig | None = None, timeout: float = 60.0, max_retries: int = 0,
                   app: ASGIApp | None = None) -> openai.AsyncOpenAI:
    """An `openai.AsyncOpenAI` that talks to the offline app in-process (no network).

    `app` lets a caller share one app (and its `stats`) between clients; by default a fresh
    `create_app(faults)` is made. The api key is `faults.api_key` when set, else "offline".
    """
    app = app if app is not None else create_app(faults)
    key = faults.api_key if faults is not None and faults.api_key else "offline"
    http_client = httpx.AsyncClient(transport=InProcessTransport(app), timeout=timeout)
    return openai.AsyncOpenAI(base_url=OFFLINE_BASE_URL, api_key=key, timeout=timeout,
                              max_retries=max_retries, http_client=http_client)
