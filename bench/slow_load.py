"""The slow-streams client, run as its own process: opens N streams at a steady ramp and holds them to the end.

`python -m bench.slow_load '<json>'` with url, key, model, streams, ramp (new streams per second) and timeout
(seconds, per stream). Prints one JSON line: streams completed and failed, the first error, the peak number
open at once, wall-clock times (time.time()) when that peak was reached, when the first stream completed and
when the last ended, the longest gap between two chunks of a stream (how late the gateway relays) and the
wait for the last chunk (the gateway sends `data: [DONE]` after the call's settlement has committed).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import asdict, dataclass, field

import aiohttp
import orjson
import uvloop

from bench import procs
from bench.load import request_body
from bench.report import percentile

_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Plan:
    url: str
    key: str
    model: str
    streams: int
    ramp: float
    timeout: float


@dataclass(slots=True)
class Outcome:
    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    open_now: int = 0
    peak_open: int = 0
    peak_at: float | None = None  # when the most streams were open at once (all of them, without errors)
    first_done_at: float | None = None
    last_done_at: float | None = None
    ramp_seconds: float = 0.0
    elapsed: float = 0.0
    max_gap_ms: list[float] = field(default_factory=list)  # longest gap between content chunks, per stream
    tail_ms: list[float] = field(default_factory=list)  # from the chunk before the last to the last ([DONE])
    frames: list[int] = field(default_factory=list)
    nofile: int = 0

    def fail(self, reason: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = reason[:500]


async def _one(session: aiohttp.ClientSession, plan: Plan, body: bytes, outcome: Outcome) -> None:
    opened = False
    received = bytearray()
    gap, last, previous_gap = 0.0, time.perf_counter(), 0.0
    try:
        async with session.post(plan.url, data=body) as response:
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                if not opened and b"data:" in chunk:
                    opened = True
                    outcome.open_now += 1
                    if outcome.open_now > outcome.peak_open:
                        outcome.peak_open, outcome.peak_at = outcome.open_now, time.time()
                elif opened:  # the gap before the last chunk (the settlement's wait) is counted apart
                    gap, previous_gap = max(gap, previous_gap), now - last
                last = now
                received += chunk
        if response.status != 200 or not received.endswith(_DONE) or b'"error"' in received:
            outcome.fail(f"HTTP {response.status}: {bytes(received[-300:])!r}")
            return
        outcome.completed += 1
        outcome.first_done_at = outcome.first_done_at or time.time()
        outcome.max_gap_ms.append(gap * 1000)
        outcome.tail_ms.append(previous_gap * 1000)
        outcome.frames.append(received.count(b"data:"))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        outcome.fail(f"{type(exc).__name__}: {exc}")
    finally:
        if opened:
            outcome.open_now -= 1
        outcome.last_done_at = time.time()


async def run(plan: Plan) -> Outcome:
    outcome = Outcome(nofile=procs.raise_nofile(plan.streams + 1000))
    timeout = aiohttp.ClientTimeout(total=plan.timeout, sock_connect=60)
    headers = {"Authorization": f"Bearer {plan.key}", "Content-Type": "application/json"}
    body = request_body(plan.model, stream=True)
    started = time.perf_counter()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers=headers, timeout=timeout
    ) as session:
        tasks = []
        for number in range(plan.streams):  # a steady ramp: stream i starts at i / ramp seconds
            delay = started + number / plan.ramp - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, plan, body, outcome)))
        outcome.ramp_seconds = time.perf_counter() - started
        await asyncio.gather(*tasks)
    outcome.elapsed = time.perf_counter() - started
    return outcome


def main() -> None:
    plan = Plan(**orjson.loads(sys.argv[1]))
    outcome = uvloop.run(run(plan))
    summary = asdict(outcome) | {  # samples reduced, so the line stays well under a pipe's 64 KiB buffer
        "max_gap_ms": {q: percentile(outcome.max_gap_ms, q) for q in (50, 99, 100)},
        "tail_ms": {q: percentile(outcome.tail_ms, q) for q in (50, 99, 100)},
        "frames": {q: percentile([float(f) for f in outcome.frames], q) for q in (0, 50, 100)},
    }
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")


if __name__ == "__main__":
    main()
