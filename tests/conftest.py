"""Shared fixtures: real processes on free ports, stopped by pid at teardown."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.localproc import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
REAL_MODERATION = SHARED_DATASETS / "openai-moderation" / "samples-1680.jsonl.gz"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def llm_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start `harness serve-llm` with fault flags; returns its base URL (…/v1)."""
    procs: list[subprocess.Popen] = []

    def start(*flags: str) -> str:
        port = free_port()
        log = open(tmp_path / f"llm-{port}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "harness.llm.server", "--port", str(port), *flags],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())
        procs.append(proc)
        wait_for_port(port, proc)
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for proc in procs:
        stop(proc)
    for log in tmp_path.glob("llm-*.log"):  # injected faults are expected; tracebacks for them are not
        assert "Traceback" not in log.read_text(errors="replace"), log


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


class RedisProcess:
    """A real redis-server owned by one test: its own port, data dir and append-only file."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        from harness.redis_server import redis_binary

        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.proc)
        import redis

        deadline = time.monotonic() + 10
        while True:  # the port opens before the AOF is loaded
            try:
                redis.Redis(port=self.port, password=self._password(extra)).ping()
                return
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _password(extra: tuple[str, ...]) -> str | None:
        return extra[extra.index("--requirepass") + 1] if "--requirepass" in extra else None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def worker_procs(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `harness worker` processes with a given environment; all stopped at teardown."""
    procs: list[subprocess.Popen] = []

    def start(redis_url: str, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        full_env = {**os.environ, "REDIS_URL": redis_url, "HARNESS_CACHE_MODE": "off",
                    "HARNESS_HEARTBEAT_TTL": "2", "HARNESS_RETRY_BASE": "0.05", "HARNESS_RETRY_CAP": "0.5",
                    **(env or {})}
        log = open(tmp_path / f"worker-{len(procs)}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "worker", *flags], env=full_env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop(proc)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the project's own cache, or follows a developer's endpoint."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "harness-cache"))
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "HARNESS_MODEL", "REDIS_URL", "HARNESS_CACHE_MODE"):
        monkeypatch.delenv(name, raising=False)
