"""The load generator, run as its own process: one JSON command per stdin line, one JSON result per stdout line.

A command names a target (url, key, model), streaming or not, a concurrency and a duration. `concurrency`
tasks send requests back to back over a pooled keep-alive aiohttp connector until the duration is up. The
result carries every latency sample (ms), the time to the first SSE frame for streams, errors, and the CPU
seconds the measured server processes spent during the phase (read from /proc by pid).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson
import redis
import uvloop

from bench import procs

_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
_DONE = b"data: [DONE]\n\n"
_Once = Callable[[aiohttp.ClientSession, str, bytes, float, "PhaseResult"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # the full chat completions URL
    key: str
    model: str


@dataclass(frozen=True, slots=True)
class Phase:
    target: Target
    stream: bool
    concurrency: int
    duration: float
    pids: Mapping[str, Sequence[int]]  # name -> processes whose CPU time is measured over the phase
    redis_url: str | None = None  # a Redis whose script calls are counted over the phase (the gateway's limits)


@dataclass(slots=True)
class PhaseResult:
    requests: int = 0
    errors: int = 0
    first_error: str | None = None
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_frame_ms: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    redis_calls: int | None = None  # script calls (EVAL, EVALSHA) Redis ran during the phase: the gateway's round trips

    def fail(self, reason: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = reason[:500]


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


class LoadGenerator:
    """Keeps one client session (connection pool) per target across phases, so rounds reuse warm connections."""

    def __init__(self) -> None:
        self._sessions: dict[Target, aiohttp.ClientSession] = {}

    def _session(self, target: Target) -> aiohttp.ClientSession:
        session = self._sessions.get(target)
        if session is None:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}
            session = aiohttp.ClientSession(connector=connector, headers=headers, timeout=_TIMEOUT)
            self._sessions[target] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    async def run(self, phase: Phase) -> PhaseResult:
        session = self._session(phase.target)
        body = request_body(phase.target.model, phase.stream)
        result = PhaseResult()
        cpu_before = {name: procs.cpu_seconds(pids) for name, pids in phase.pids.items()}
        redis_before = _redis_calls(phase.redis_url)
        started = time.perf_counter()
        deadline = started + phase.duration
        once = _stream_once if phase.stream else _complete_once
        job = _Job(session, phase.target.url, body, deadline, result, once)
        await asyncio.gather(*(_worker(job) for _ in range(phase.concurrency)))
        result.elapsed = time.perf_counter() - started
        result.cpu_seconds = {name: procs.cpu_seconds(pids) - cpu_before[name] for name, pids in phase.pids.items()}
        redis_after = _redis_calls(phase.redis_url)
        if redis_before is not None and redis_after is not None:
            result.redis_calls = redis_after - redis_before
        return result


@dataclass(frozen=True, slots=True)
class _Job:
    session: aiohttp.ClientSession
    url: str
    body: bytes
    deadline: float
    result: PhaseResult
    once: _Once


async def _worker(job: _Job) -> None:
    while time.perf_counter() < job.deadline:
        sent = time.perf_counter()
        try:
            await job.once(job.session, job.url, job.body, sent, job.result)
        except (aiohttp.ClientError, TimeoutError) as exc:
            job.result.fail(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)  # a refused connection must not turn into a busy loop


async def _complete_once(
    session: aiohttp.ClientSession, url: str, body: bytes, sent: float, result: PhaseResult
) -> None:
    async with session.post(url, data=body) as response:
        payload = await response.read()
    if response.status != 200 or b'"usage"' not in payload:
        result.fail(f"HTTP {response.status}: {payload[:300]!r}")
        return
    result.requests += 1
    result.latencies_ms.append((time.perf_counter() - sent) * 1000)


async def _stream_once(session: aiohttp.ClientSession, url: str, body: bytes, sent: float, result: PhaseResult) -> None:
    first: float | None = None
    received = bytearray()
    async with session.post(url, data=body) as response:
        async for chunk in response.content.iter_any():
            if first is None and b"data:" in chunk:
                first = time.perf_counter()
            received += chunk
    if response.status != 200 or first is None or not received.endswith(_DONE) or b'"error"' in received:
        result.fail(f"HTTP {response.status}: {bytes(received[-300:])!r}")
        return
    result.requests += 1
    result.latencies_ms.append((time.perf_counter() - sent) * 1000)
    result.first_frame_ms.append((first - sent) * 1000)
    result.frames.append(received.count(b"data:"))


def _redis_calls(url: str | None) -> int | None:
    """Script calls Redis has run since it started (INFO commandstats: every limiter and breaker call is one, a round
    trip each, or one command of a pipelined round trip), or None without a Redis to ask."""
    if url is None:
        return None
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        stats: dict[str, Any] = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha"))


def parse_phase(line: str) -> Phase:
    raw = orjson.loads(line)
    return Phase(
        target=Target(**raw["target"]),
        stream=bool(raw["stream"]),
        concurrency=int(raw["concurrency"]),
        duration=float(raw["duration"]),
        pids={name: [int(p) for p in pids] for name, pids in raw["pids"].items()},
        redis_url=raw.get("redis_url"),
    )


def main() -> None:
    """Read phases from stdin until EOF; answer each with a PhaseResult as one JSON line."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        generator = LoadGenerator()
        try:
            for line in sys.stdin:
                if not line.strip():
                    continue
                result = runner.run(generator.run(parse_phase(line)))
                sys.stdout.write(orjson.dumps(asdict(result)).decode() + "\n")
                sys.stdout.flush()
        finally:
            runner.run(generator.close())


if __name__ == "__main__":
    main()
