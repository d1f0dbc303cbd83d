"""End-to-end helpers: `aipower` as a real process (serve and CLI), and the Node SDK package installed once."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.redis_service import new_prefix, prefix_cleanup, require_redis
from tests.servers import free_port

NODE_DIR = Path(__file__).parent / "node"
START_DEADLINE = 30.0
STOP_DEADLINE = 15.0
# Variables of the test runner's own environment that would change what the gateway sees.
_OWN_PREFIXES = ("AIPOWER_",)
_OWN_SUFFIXES = ("_API_KEY", "_BASE_URL")


def clean_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any aipower or provider setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES) and not k.endswith(_OWN_SUFFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(args: list[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`aipower ARGS` as a subprocess of this interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "aipower", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Served:
    """A running `aipower serve` process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def aipower_serve(env: Mapping[str, str], cwd: Path, *extra_args: str) -> Iterator[Served]:
    """Start `aipower serve` on a free port, wait for GET /health to answer 200, stop it afterwards."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    args = [sys.executable, "-m", "aipower", "serve", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_healthy(served)
        yield served
    finally:
        _stop(process)


def _wait_healthy(served: Served) -> None:
    deadline = time.monotonic() + START_DEADLINE
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{served.url}/health").status_code == 200:
                    return
            try:
                code = served.process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"aipower serve exited with {code} before answering:\n{served.output()}")
    pytest.fail(f"aipower serve did not answer GET /health within {START_DEADLINE}s:\n{served.output()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            # The whole session we started (uvicorn's worker processes included), by its process group id.
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_DEADLINE)
    # Anything left in the session we started (a stray worker), by its process group id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def node_package() -> Path:
    """tests/e2e/node with its locked dependencies installed (`npm ci` when node_modules is missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the Node SDK tests need `node` (>= 20) and `npm` on PATH; install Node.js 20 or newer")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            pytest.fail(f"`npm ci` in {NODE_DIR} failed:\n{result.stdout}\n{result.stderr}")
    return NODE_DIR


@pytest.fixture
def shared_limits() -> Iterator[dict[str, str]]:
    """Settings that put rate limits in the machine's Redis under a prefix of this test's own (removed after)."""
    url = require_redis()
    with prefix_cleanup(new_prefix()) as prefix:
        yield {"AIPOWER_REDIS_URL": url, "AIPOWER_REDIS_PREFIX": prefix}
