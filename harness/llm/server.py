"""Serve the offline OpenAI-compatible app on a real socket with uvicorn.

Why: some things only show up over a real connection (keep-alive, chunked encoding, a dropped
socket, a client-side timeout, another process such as an Arq worker pointing OPENAI_BASE_URL
at it). `harness serve-llm` and `python -m harness.llm.server` both land here.

Injected "cut" faults raise `StreamCut` inside the app, which uvicorn logs as "Exception in ASGI
application"; a log filter hides those expected tracebacks and keeps every other error.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from dataclasses import fields
from typing import Any

import uvicorn

from harness.llm.openai_app import FAULT_KINDS, FaultConfig, StreamCut, create_app

__all__ = ["register_cli", "serve"]

# FaultConfig field -> (flag, type, help)
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "latency_ms": ("--latency-ms", float, "delay before the first byte, ms"),
    "token_delay_ms": ("--token-delay-ms", float, "delay between streamed chunks, ms"),
    "rate_429": ("--rate-429", float, "fraction of chat requests answered 429"),
    "retry_after_s": ("--retry-after", float, "Retry-After seconds sent with 429"),
    "rate_500": ("--rate-500", float, "fraction answered 500"),
    "rate_timeout": ("--rate-timeout", float, "fraction that hang for --hang-s before answering"),
    "hang_s": ("--hang-s", float, "how long a 'timeout' fault hangs, s"),
    "rate_cut": ("--rate-cut", float, "fraction of responses cut mid-body"),
    "rate_malformed": ("--rate-malformed", float, "fraction answering garbage with no JSON"),
    "fail_first": ("--fail-first", int, "first N attempts of each distinct request fail"),
    "fail_kind": ("--fail-kind", str, "how they fail: " + ", ".join(FAULT_KINDS)),
    "api_key": ("--api-key", str, "require 'Authorization: Bearer KEY'"),
    "seed": ("--seed", int, "seed for the fault draws"),
}


class _HideInjectedCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, StreamCut)


class _Server(uvicorn.Server):
    """uvicorn's server, printing one ready line once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self._ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self._ready_line, flush=True)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = FaultConfig()
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to bind; 0 picks a free one")
    for f in fields(FaultConfig):
        flag, kind, help_text = _FLAGS[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "type": kind, "default": getattr(defaults, f.name)}
        if f.name == "fail_kind":
            kwargs["choices"] = FAULT_KINDS
        parser.add_argument(flag, help=f"{help_text} (default {getattr(defaults, f.name)})", **kwargs)


def _faults_from(args: argparse.Namespace) -> FaultConfig:
    return FaultConfig(**{f.name: getattr(args, f.name) for f in fields(FaultConfig)})


def _run(args: argparse.Namespace) -> int:
    try:
        faults = _faults_from(args)
    except ValueError as exc:
        print(f"serve-llm: {exc}", file=sys.stderr)
        return 2
    serve(args.host, args.port, faults)
    return 0


def register_cli(subparsers: Any) -> None:
    """Add the `serve-llm` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "serve-llm", help="serve the offline model as an OpenAI-compatible HTTP API, with optional faults",
        description="Serve the offline keyword model at http://HOST:PORT/v1 until SIGINT/SIGTERM.",
    )
    _add_arguments(parser)
    parser.set_defaults(func=_run)


def serve(host: str, port: int, faults: FaultConfig) -> None:
    """Run uvicorn until SIGINT/SIGTERM; print the URL (flushed) once it accepts connections."""
    logging.getLogger("uvicorn.error").addFilter(_HideInjectedCuts())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(faults), host=host, port=bound, http="h11", loop="asyncio", lifespan="on",
        log_level="warning", access_log=False, timeout_graceful_shutdown=2,
    )
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    server = _Server(config, f"serving OpenAI-compatible offline model on http://{shown}:{bound}/v1")
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT after its graceful shutdown
        pass
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.llm.server --port N [fault flags]`."""
    parser = argparse.ArgumentParser(prog="python -m harness.llm.server", description=serve.__doc__)
    _add_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
