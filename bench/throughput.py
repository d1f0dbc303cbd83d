"""The default bench (`python -m bench`): the gateway against a direct call to the same fake upstream, interleaved.

Starts a fake OpenAI-compatible upstream, `aipower serve` (or measures --gateway-url), and a load generator,
each in its own process and pinned so the gateway has a core to itself. Each round runs every phase against
the upstream directly and through the gateway, back to back, alternating which goes first, so machine noise
hits both. Prints `metric | direct | gateway | ratio` and writes the same to bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import backends, procs, report, servers
from bench.load import PhaseResult
from bench.upstream import STREAM_CHUNKS

DIRECT_MODEL = "deepseek-chat"
GATEWAY_MODEL = "deepseek/deepseek-chat"
Prepare = Callable[[dict[str, str]], None]
SCENARIOS_HELP = (
    "scenarios (each has --help): python -m bench slow-streams | prompt-size | history | backends | backends-ab. "
    "See bench/README.md."
)


@dataclass(frozen=True, slots=True)
class PhaseSpec:
    name: str
    stream: bool
    single: bool  # one client instead of --concurrency clients


PHASES = (
    PhaseSpec("load", stream=False, single=False),
    PhaseSpec("single", stream=False, single=True),
    PhaseSpec("stream", stream=True, single=False),
    PhaseSpec("stream-single", stream=True, single=True),
)


@dataclass(frozen=True, slots=True)
class Config:
    duration: float
    concurrency: int
    rounds: int
    warmup: float
    upstream_port: int
    gateway_url: str | None
    gateway_key: str | None
    gateway_pid: int | None
    gateway_model: str
    gateway_env: tuple[tuple[str, str], ...]
    backend: str = "sqlite"
    redis: bool = False
    workers: int = 1
    single_placement: str = "symmetric"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a default run (the history and backends scenarios take them too)."""
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per phase per round [3]")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the loaded phases [32]")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of direct/gateway phases [5]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 0.5 s phases (~10 s in all)")
    parser.add_argument("--upstream-port", type=int, default=0, help="fixed port for the fake upstream [free]")
    parser.add_argument("--gateway-url", help="measure this running gateway (e.g. http://127.0.0.1:4000)")
    parser.add_argument("--gateway-key", help="API key for --gateway-url")
    parser.add_argument("--gateway-pid", type=int, help="pid of --gateway-url's server [the port's listener]")
    parser.add_argument("--gateway-model", default=GATEWAY_MODEL, help=f"model id via the gateway [{GATEWAY_MODEL}]")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for aipower serve"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite", help="database [sqlite]")
    parser.add_argument("--redis", action="store_true", help="rate limits on Redis (a private key prefix)")
    parser.add_argument("--workers", type=int, default=1, help="aipower serve --workers (>1 needs --redis) [1]")
    parser.add_argument(
        "--single-placement",
        choices=("symmetric", "shared"),
        default="symmetric",
        help="the single (c=1, JSON) phase: the upstream runs on the gateway's core, so a direct call and a call "
        "through the gateway each cross between cores once a round trip (symmetric), or stays beside the load "
        "generator, where a direct call never crosses (shared) [symmetric]",
    )


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, epilog=SCENARIOS_HELP)
    add_arguments(parser)
    return config_from(parser, parser.parse_args(argv))


def config_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    if args.workers > 1 and not args.redis:
        parser.error("--workers above 1 needs --redis (aipower serve refuses it otherwise)")
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    if args.gateway_url and not args.gateway_key:
        parser.error("--gateway-url needs --gateway-key")
    if args.concurrency < 1 or args.rounds < 1 or args.duration <= 0:
        parser.error("--concurrency and --rounds must be at least 1, --duration positive")
    quick = bool(args.quick)
    return Config(
        duration=0.5 if quick else args.duration,
        concurrency=args.concurrency,
        rounds=1 if quick else args.rounds,
        warmup=0.5 if quick else min(2.0, args.duration),
        upstream_port=args.upstream_port,
        gateway_url=args.gateway_url,
        gateway_key=args.gateway_key,
        gateway_pid=args.gateway_pid,
        gateway_model=args.gateway_model,
        gateway_env=tuple((name, value) for name, _, value in (item.partition("=") for item in args.env)),
        backend=args.backend,
        redis=bool(args.redis),
        workers=args.workers,
        single_placement=args.single_placement,
    )


@dataclass(frozen=True, slots=True)
class Targets:
    direct: dict[str, str]
    gateway: dict[str, str]
    pids: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class SingleMove:
    """Where the upstream runs during the `single` phase (see `--single-placement`).

    On two CPUs the load generator and the upstream share one, so a direct call at c=1 never crosses between cores
    while a call through the gateway crosses on both of its round trips. In the `single` phase the upstream and the
    gateway never run at the same time (the gateway waits for the answer), so the upstream can run on the gateway's
    core without taking CPU from it: then each path crosses once a round trip (caller to server). A stream's upstream
    keeps writing chunks while the gateway relays the first, so `stream-single` stays as placed.
    """

    upstream_pid: int
    cpus: frozenset[int]  # during the single phase
    home: frozenset[int]  # otherwise

    def during(self, spec: PhaseSpec) -> contextlib.AbstractContextManager[None]:
        if not spec.single or spec.stream:
            return contextlib.nullcontext()
        return procs.moved(self.upstream_pid, self.cpus, self.home)


def single_move(config: Config, placement: procs.Placement, upstream_pid: int) -> SingleMove | None:
    """Only where the load generator and the upstream share CPUs (2 CPUs), and only for a gateway this bench
    started and pinned alone to its core."""
    if config.single_placement != "symmetric" or config.gateway_url or config.workers > 1 or not placement.gateway:
        return None
    if placement.load != placement.upstream:
        return None  # 3 or more CPUs: a direct call already crosses between cores
    return SingleMove(upstream_pid, placement.gateway, placement.upstream)


class Runner:
    """Sends phases to the load generator and files the results by (target, phase)."""

    def __init__(self, load: servers.LoadClient, targets: Targets, config: Config, move: SingleMove | None) -> None:
        self._load = load
        self._targets = targets
        self._config = config
        self._move = move
        self.results: dict[str, list[PhaseResult]] = {}

    def phase(self, target: str, spec: PhaseSpec, duration: float) -> PhaseResult:
        command = {
            "target": self._targets.direct if target == "direct" else self._targets.gateway,
            "stream": spec.stream,
            "concurrency": 1 if spec.single else self._config.concurrency,
            "duration": duration,
            "pids": self._targets.pids,
            "redis_url": backends.REDIS_URL if target == "gateway" and self._config.redis else None,
        }
        with self._move.during(spec) if self._move else contextlib.nullcontext():
            return self._load.run(command, timeout=duration + 90)

    def measure(self, target: str, spec: PhaseSpec) -> None:
        result = self.phase(target, spec, self._config.duration)
        self.results.setdefault(f"{target}/{spec.name}", []).append(result)
        per_second = result.requests / result.elapsed if result.elapsed else 0.0
        p50 = report.percentile(result.latencies_ms, 50) or 0.0
        errors = f" ({result.errors} errors)" if result.errors else ""
        print(f"  {spec.name:<14} {target:<8} {per_second:9,.0f}/s  p50 {p50:8.2f} ms{errors}", file=sys.stderr)


def run_rounds(runner: Runner, config: Config) -> None:
    for target in ("direct", "gateway"):  # open connections, fill caches; results dropped
        for spec in PHASES:
            runner.phase(target, spec, config.warmup / 2)
    for number in range(config.rounds):
        print(f"round {number + 1}/{config.rounds}", file=sys.stderr)
        order = ("direct", "gateway") if number % 2 == 0 else ("gateway", "direct")
        for spec in PHASES:
            for target in order:
                runner.measure(target, spec)


def start_gateway(
    stack: contextlib.ExitStack, config: Config, cpus: frozenset[int], upstream: int, prepare: Prepare | None
) -> servers.Gateway:
    if config.gateway_url:
        assert config.gateway_key is not None
        return servers.external_gateway(config.gateway_url, config.gateway_key, config.gateway_pid)
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aipower-bench-")))
    env = backends.backend(stack, config.backend, config.redis).env | dict(config.gateway_env)
    if config.workers > 1:  # several workers share every CPU with the rest: pinning them to one would halve them
        cpus = frozenset()
    options = servers.ServeOptions(env, workers=config.workers, prepare=prepare)
    return servers.start_aipower(stack, cpus, workdir, upstream, options)


def execute(config: Config, prepare: Prepare | None = None) -> dict[str, Any]:
    """One whole run; `prepare(env)` runs after the bench user exists, before the gateway starts."""
    placement = procs.plan_cpus()
    load_before = procs.load_average()
    with contextlib.ExitStack() as stack:
        upstream_pid, upstream_port = servers.start_upstream(stack, placement.upstream, config.upstream_port)
        gateway = start_gateway(stack, config, placement.gateway, upstream_port, prepare)
        rss_rest = procs.rss_bytes(gateway.pids) if gateway.pids else None
        targets = Targets(
            direct={"url": f"http://127.0.0.1:{upstream_port}/v1/chat/completions", "key": "sk-bench"}
            | {"model": DIRECT_MODEL},
            gateway={"url": f"{gateway.url}/chat/completions", "key": gateway.key, "model": config.gateway_model},
            pids={"upstream": [upstream_pid]} | ({"gateway": gateway.pids} if gateway.pids else {}),
        )
        move = single_move(config, placement, upstream_pid)
        runner = Runner(servers.LoadClient(stack, placement.load), targets, config, move)
        run_rounds(runner, config)
        rss_after = procs.rss_bytes(gateway.pids) if gateway.pids else None
    return {
        "results": runner.results,
        "rss": (rss_rest, rss_after),
        "load_average": (load_before, procs.load_average()),
        "gateway_url": gateway.url,
        "placement": {k: sorted(v) for k, v in asdict(placement).items()}
        | {"single_phase": "upstream on the gateway's CPUs" if move else "as above"},
    }


def build_rows(results: dict[str, list[PhaseResult]], rss: tuple[int | None, int | None], c: int) -> list[report.Row]:
    def both(phase: str, measure: Any) -> tuple[Any, Any]:
        return measure(results[f"direct/{phase}"]), measure(results[f"gateway/{phase}"])

    def p(q: float, attribute: str = "latencies_ms") -> Any:
        return lambda rs: report.percentile(report.pooled(rs, attribute), q)

    single = both("single", p(50))
    mib = [None if v is None else v / 2**20 for v in rss]
    gateway_cpu = [report.cpu_ms_per_request(results[f"gateway/{n}"], "gateway") for n in ("load", "stream")]
    return [
        report.Row(f"requests/s, c={c}", *both("load", report.rate), digits=0),
        report.Row(f"latency p50 ms, c={c}", *both("load", p(50)), digits=2),
        report.Row(f"latency p99 ms, c={c}", *both("load", p(99)), digits=2),
        report.Row("latency p50 ms, c=1", *single, digits=3),
        report.Row("added latency p50 ms, c=1", None, report.difference(single[1], single[0]), digits=3),
        report.Row(f"streams/s (20 chunks), c={c}", *both("stream", report.rate), digits=0),
        report.Row("time to first chunk p50 ms, c=1", *both("stream-single", p(50, "first_frame_ms")), digits=3),
        report.Row("whole stream p50 ms, c=1", *both("stream-single", p(50)), digits=3),
        report.Row(f"gateway CPU ms/request, c={c}", None, gateway_cpu[0], digits=3),
        report.Row(f"gateway CPU ms/stream, c={c}", None, gateway_cpu[1], digits=3),
        report.Row("gateway CPU us per relayed chunk (estimate)", None, per_chunk(*gateway_cpu), digits=1),
        report.Row("gateway RSS MiB at rest", None, mib[0]),
        report.Row("gateway RSS MiB after load", None, mib[1]),
        report.Row(f"Redis script calls/request, c={c}", None, redis_per_request(results["gateway/load"]), digits=2),
    ]


def redis_per_request(runs: Sequence[PhaseResult]) -> float | None:
    """Redis script calls (the limiter's and the breakers') per completed request, where they were counted."""
    counted = [r for r in runs if r.redis_calls is not None]
    requests = sum(r.requests for r in counted)
    return sum(r.redis_calls or 0 for r in counted) / requests if counted and requests else None


def per_chunk(request_ms: float | None, stream_ms: float | None) -> float | None:
    """What relaying one chunk costs: a stream's CPU beyond a non-streamed call's, spread over its 21 relayed
    frames (20 content chunks and the usage chunk; both calls pay the same auth, billing and routing)."""
    if request_ms is None or stream_ms is None:
        return None
    return (stream_ms - request_ms) * 1000 / (STREAM_CHUNKS + 1)


def headroom(results: dict[str, list[PhaseResult]]) -> str:
    """How many times the gateway's rate the fake upstream could serve on its core (the brief asks for >= 5x)."""
    cost = report.cpu_ms_per_request(results["direct/load"], "upstream")
    gateway_rate = report.rate(results["gateway/load"])
    if not cost or not gateway_rate:
        return "fake upstream headroom: not measured (CPU time below /proc's 10 ms resolution)"
    capacity = 1000 / cost
    verdict = "ok" if capacity >= 5 * gateway_rate else "TOO SLOW: the upstream may limit the gateway"
    return (
        f"fake upstream: {cost * 1000:.0f} us CPU/request -> ~{capacity:,.0f} req/s on one core, "
        f"{capacity / gateway_rate:.1f}x the gateway's rate ({verdict})"
    )


def busy_note(load: tuple[float, float]) -> str:
    """Other processes on the machine skew absolute numbers (ratios less so, as rounds interleave)."""
    cpus = os.cpu_count() or 1
    note = f"machine load average (1 min): {load[0]:.2f} before, {load[1]:.2f} after, {cpus} CPUs"
    return note + (" - other processes competed for the CPUs" if max(load) > cpus / 2 + 0.5 else "")


def document(config: Config, run: dict[str, Any], started: dt.datetime) -> dict[str, Any]:
    """The JSON of one run: its table, its settings and every phase of every round."""
    rows = build_rows(run["results"], run["rss"], config.concurrency)
    return {
        "started": started.isoformat(timespec="seconds"),
        "machine": report.machine(),
        "config": asdict(config) | {"gateway_key": None},
        "gateway_url": run["gateway_url"],
        "placement": run["placement"],
        "rows": [row.as_json() for row in rows],
        "headroom": headroom(run["results"]),
        "load_average_1min": run["load_average"],
        "errors": report.errors(run["results"]),
        "phases": {name: [report.summarize(r) for r in rs] for name, rs in run["results"].items()},
    }
