"""`python -m bench prompt-size`: time and gateway CPU per call for prompts of 1 KB to 1 MB, direct vs gateway.

One client, one call at a time over a keep-alive connection, direct and through the gateway interleaved call by
call. The gateway gets AIPOWER_MAX_BODY_BYTES of 64 MiB and an operator catalog that raises deepseek-chat's
context window, so a 1 MB prompt is admitted. Issue 8's target: a 1 MB prompt costs time linear in its size.
The table has the p50 per size, the ratio, the gateway's CPU per call, and the marginal cost per KB between
sizes; a least-squares line over all sizes gives the fixed and the per-KB cost.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import procs, report, servers

SIZES_KB = (1, 10, 100, 1000)
_CATALOG = '[models."deepseek/deepseek-chat"]\ncontext = 100_000_000\n'
_FILLER = "The quick brown fox jumps over the lazy dog. "


@dataclass(frozen=True, slots=True)
class Endpoint:
    port: int
    path: str
    key: str
    model: str


@dataclass(frozen=True, slots=True)
class SizeResult:
    kb: int
    direct_ms: list[float]
    gateway_ms: list[float]
    gateway_cpu_ms: float


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench prompt-size", description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="measured calls per size and target [200]")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES_KB)), help="prompt sizes in KB [1,10,100,1000]")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    return args


def body(model: str, kb: int) -> bytes:
    text = (_FILLER * (kb * 1000 // len(_FILLER) + 1))[: kb * 1000]
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16})


def call(connection: http.client.HTTPConnection, endpoint: Endpoint, payload: bytes) -> float:
    """One POST on a kept-alive connection; its wall time in ms (fails loudly on anything but a 200 with usage)."""
    headers = {"Authorization": f"Bearer {endpoint.key}", "Content-Type": "application/json"}
    sent = time.perf_counter()
    connection.request("POST", endpoint.path, body=payload, headers=headers)
    response = connection.getresponse()
    answer = response.read()
    elapsed = (time.perf_counter() - sent) * 1000
    if response.status != 200 or b'"usage"' not in answer:
        raise RuntimeError(f"HTTP {response.status} from port {endpoint.port}: {answer[:300]!r}")
    return elapsed


def measure_size(kb: int, endpoints: tuple[Endpoint, Endpoint], calls: int, gateway_pids: list[int]) -> SizeResult:
    direct, gateway = endpoints
    payloads = (body(direct.model, kb), body(gateway.model, kb))
    connections = [http.client.HTTPConnection("127.0.0.1", e.port, timeout=60) for e in endpoints]
    try:
        for _ in range(2):  # warm-up: connections, caches, buffers of this size
            call(connections[0], direct, payloads[0])
            call(connections[1], gateway, payloads[1])
        times: tuple[list[float], list[float]] = ([], [])
        cpu = 0.0
        for number in range(calls):  # interleaved, alternating which goes first
            for side in (0, 1) if number % 2 == 0 else (1, 0):
                before = procs.cpu_seconds(gateway_pids) if side else 0.0
                times[side].append(call(connections[side], endpoints[side], payloads[side]))
                cpu += procs.cpu_seconds(gateway_pids) - before if side else 0.0
    finally:
        for connection in connections:
            connection.close()
    return SizeResult(kb, times[0], times[1], cpu * 1000 / calls)


def run(args: argparse.Namespace, sizes: Sequence[int]) -> list[SizeResult]:
    placement = procs.plan_cpus()
    with contextlib.ExitStack() as stack:
        _, upstream_port = servers.start_upstream(stack, placement.upstream, 0)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aipower-prompt-")))
        (workdir / "catalog.toml").write_text(_CATALOG)
        env = {"AIPOWER_MAX_BODY_BYTES": str(64 * 2**20), "AIPOWER_CATALOG": str(workdir / "catalog.toml")}
        gateway = servers.start_aipower(stack, placement.gateway, workdir, upstream_port, servers.ServeOptions(env))
        if placement.load:  # this process is the client: keep it off the gateway's core
            os.sched_setaffinity(0, placement.load)
        port = int(gateway.url.rsplit(":", 1)[1].split("/", 1)[0])
        endpoints = (
            Endpoint(upstream_port, "/v1/chat/completions", servers.DIRECT_KEY, "deepseek-chat"),
            Endpoint(port, "/v1/chat/completions", gateway.key, "deepseek/deepseek-chat"),
        )
        results = []
        for kb in sizes:
            results.append(measure_size(kb, endpoints, args.calls, gateway.pids))
            print(f"  {kb:>5} KB done", file=sys.stderr)
        return results


def fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b)."""
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    return mean_y - slope * mean_x, slope


def rows(results: Sequence[SizeResult]) -> list[list[str]]:
    table = []
    previous: tuple[int, float] | None = None
    for result in results:
        direct, gateway = statistics.median(result.direct_ms), statistics.median(result.gateway_ms)
        marginal = "-"
        if previous is not None:
            marginal = f"{(gateway - previous[1]) / (result.kb - previous[0]) * 1000:.1f}"
        cells = [f"{result.kb:,} KB", f"{direct:.2f}", f"{gateway:.2f}", f"{gateway / direct:.2f}x"]
        table.append([*cells, f"{gateway - direct:.2f}", f"{result.gateway_cpu_ms:.2f}", marginal])
        previous = (result.kb, gateway)
    return table


HEADER = ("prompt", "direct p50 ms", "gateway p50 ms", "ratio", "added ms", "gateway CPU ms/call", "marginal us/KB")


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = dt.datetime.now(dt.UTC)
    try:
        results = run(args, sizes)
    except (RuntimeError, OSError) as exc:
        print(f"prompt-size failed: {exc}", file=sys.stderr)
        return 1
    table = rows(results)
    print(report.render_rows(HEADER, table))
    kbs = [float(r.kb) for r in results]
    time_fit = fit(kbs, [statistics.median(r.gateway_ms) for r in results])
    cpu_fit = fit(kbs, [r.gateway_cpu_ms for r in results])
    lines = [
        f"gateway p50 ~ {time_fit[0]:.2f} ms + {time_fit[1] * 1000:.1f} us/KB (least squares over the sizes)",
        f"gateway CPU ~ {cpu_fit[0]:.2f} ms + {cpu_fit[1] * 1000:.1f} us/KB",
    ]
    print("\n".join(lines))
    document: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": report.machine()}
    document |= {"config": vars(args), "header": HEADER, "rows": table, "fit": lines}
    document["samples"] = [{"kb": r.kb, "direct_ms": r.direct_ms, "gateway_ms": r.gateway_ms} for r in results]
    report.write_json(document, started, "prompt-size")
    return 0
