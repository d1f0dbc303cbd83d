"""Starting what the benchmark measures: the fake upstream, `aipower serve`, and the load generator process."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from bench import procs
from bench.load import PhaseResult

BENCH_EMAIL = "bench@example.com"
DIRECT_KEY = "sk-bench"
BENCH_RATE_LIMIT = 1_000_000_000  # requests per minute
BENCH_CREDIT_USD = "10000"  # ~250M bench requests at deepseek-chat prices


@dataclass(frozen=True, slots=True)
class Gateway:
    url: str  # base URL ending in /v1
    key: str
    pids: list[int]  # the gateway's process tree (empty when unknown: CPU and memory are then not reported)


def _read_line(stream: IO[str], timeout: float, what: str) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{what} said nothing within {timeout:g}s")
    line = stream.readline()
    if not line:
        raise RuntimeError(f"{what} exited unexpectedly")
    return line


def start_upstream(
    stack: contextlib.ExitStack,
    cpus: frozenset[int],
    port: int,
    extra: Sequence[str] = (),
    nofile: int | None = None,
) -> tuple[int, int]:
    """The fake upstream in its own process (`extra`: more bench.upstream flags); returns (pid, port)."""
    argv = [sys.executable, "-m", "bench.upstream", "--port", str(port), *extra]
    process = procs.spawn(argv, cpus, nofile=nofile)
    stack.callback(procs.stop, process)
    assert process.stdout is not None
    line = _read_line(process.stdout, 15, "the fake upstream")
    bound = int(line.split()[-1])
    procs.wait_for_port(bound, process, 15)
    return process.pid, bound


def _gateway_env(workdir: Path, port: int, upstream_port: int) -> dict[str, str]:
    # A clean provider environment: only DeepSeek, pointed at the fake, whatever the caller's shell exports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIPOWER_")}
    env = {k: v for k, v in env.items() if not (k.endswith("_API_KEY") or k.endswith("_BASE_URL"))}
    env.update(
        AIPOWER_DATABASE_URL=f"sqlite:///{workdir / 'aipower.db'}",
        AIPOWER_PORT=str(port),
        DEEPSEEK_API_KEY=DIRECT_KEY,
        DEEPSEEK_BASE_URL=f"http://127.0.0.1:{upstream_port}",
        # Rate limits stay on (every call is counted and checked) but never bind: the default 600/min would.
        AIPOWER_DEFAULT_RPM=str(BENCH_RATE_LIMIT),
        AIPOWER_DEFAULT_TPM=str(BENCH_RATE_LIMIT * 1000),
        AIPOWER_MAX_CONCURRENT_PER_KEY="1024",
    )
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path, optional: bool = False) -> str:
    argv = [sys.executable, "-m", "aipower", *args]
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if optional and done.returncode == 2 and "No such command" in done.stderr:
        return ""  # an aipower from before that command existed
    if done.returncode != 0:
        raise RuntimeError(f"aipower {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How to start `aipower serve`: extra environment (e.g. AIPOWER_DATABASE_URL), workers, the open-file
    limit, and `prepare`, run with the gateway's environment after the bench user and key exist and before
    the server starts (the history scenario fills the database there)."""

    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    nofile: int | None = None
    prepare: Callable[[dict[str, str]], None] | None = None


def start_aipower(
    stack: contextlib.ExitStack,
    cpus: frozenset[int],
    workdir: Path,
    upstream_port: int,
    options: ServeOptions | None = None,
) -> Gateway:
    """`aipower serve` on a fresh database (SQLite unless options.env says otherwise), plus a user and a key
    made with the CLI."""
    options = options or ServeOptions()
    port = procs.free_port()
    env = _gateway_env(workdir, port, upstream_port) | options.env
    _cli("users", "create", BENCH_EMAIL, env=env, cwd=workdir)
    key = _cli("keys", "create", BENCH_EMAIL, env=env, cwd=workdir).strip().splitlines()[-1]
    # Prepaid billing refuses a zero balance (402): top the bench user up, where the CLI has the command.
    _cli("credits", "add", BENCH_EMAIL, BENCH_CREDIT_USD, env=env, cwd=workdir, optional=True)
    if options.prepare is not None:
        options.prepare(env)
    log = stack.enter_context((workdir / "serve.log").open("w"))
    argv = [sys.executable, "-m", "aipower", "serve", "--port", str(port), "--workers", str(options.workers)]
    # cwd: no ./aipower-data, no ./aipower
    process = procs.spawn(argv, cpus, env=env, stdout=log, cwd=workdir, nofile=options.nofile)
    stack.callback(procs.stop, process)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", process, 60)
        _wait_workers(process.pid, options.workers, 30)
    except RuntimeError:
        log.flush()
        sys.stderr.write((workdir / "serve.log").read_text()[-2000:])
        raise
    return Gateway(f"http://127.0.0.1:{port}/v1", key, procs.tree(process.pid))


def _wait_workers(pid: int, workers: int, timeout: float) -> None:
    """With --workers N, uvicorn's supervisor forks N children (plus multiprocessing's resource tracker)."""
    deadline = time.monotonic() + timeout
    while workers > 1 and len(procs.tree(pid)) < workers + 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"aipower serve did not start {workers} workers within {timeout:g}s")
        time.sleep(0.1)


def _wait_healthy(url: str, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"aipower serve exited with {process.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g}s")


def external_gateway(url: str, key: str, pid: int | None) -> Gateway:
    """A gateway someone else started (e.g. LiteLLM's proxy); its pid is found from the listening port."""
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    if pid is None:
        port = int(base.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        pid = procs.listener_pid(port)
    return Gateway(base, key, procs.tree(pid) if pid is not None else [])


class LoadClient:
    """The orchestrator's end of the load generator process (see bench/load.py for the protocol)."""

    def __init__(self, stack: contextlib.ExitStack, cpus: frozenset[int]) -> None:
        self._process = procs.spawn([sys.executable, "-m", "bench.load"], cpus, stdin=subprocess.PIPE)
        stack.callback(procs.stop, self._process)

    def run(self, phase: dict[str, Any], timeout: float) -> PhaseResult:
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(orjson.dumps(phase).decode() + "\n")
        process.stdin.flush()
        return PhaseResult(**orjson.loads(_read_line(process.stdout, timeout, "the load generator")))
