"""`python -m bench backends-ab`: SQLite and PostgreSQL + Redis gateways measured in the same rounds, interleaved.

`python -m bench backends` runs the embedded defaults and PostgreSQL + Redis one after the other, so on a machine
whose speed drifts (a shared or nested virtual machine) the two runs see different machines. Here both gateways run
at once, each `aipower serve --workers 1` pinned to the same core, against one fake upstream; every phase of every
round is measured on the upstream directly and on both gateways back to back, in an order that rotates each round.
Only one target is loaded at a time. The table gives each gateway's figures and PostgreSQL + Redis as a share of
SQLite's (issue 8's target: at least 70%).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any

from bench import backends, compare, procs, report, servers, throughput
from bench.load import PhaseResult

TARGETS = ("direct", "sqlite", "postgres+redis")


def parse_args(argv: Sequence[str]) -> throughput.Config:
    parser = argparse.ArgumentParser(prog="python -m bench backends-ab", description=__doc__)
    throughput.add_arguments(parser)
    return throughput.config_from(parser, parser.parse_args(argv))


def measure(config: throughput.Config) -> dict[str, list[PhaseResult]]:
    placement = procs.plan_cpus()
    results: dict[str, list[PhaseResult]] = {}
    with contextlib.ExitStack() as stack:
        upstream_pid, port = servers.start_upstream(stack, placement.upstream, config.upstream_port)
        gateways = {
            "sqlite": throughput.start_gateway(
                stack, dataclasses.replace(config, backend="sqlite", redis=False), placement.gateway, port, None
            ),
            "postgres+redis": throughput.start_gateway(
                stack, dataclasses.replace(config, backend="postgres", redis=True), placement.gateway, port, None
            ),
        }
        direct = {"url": f"http://127.0.0.1:{port}/v1/chat/completions", "key": "sk-bench"}
        targets: dict[str, dict[str, Any]] = {"direct": direct | {"model": throughput.DIRECT_MODEL}}
        for name, gateway in gateways.items():
            targets[name] = {
                "url": f"{gateway.url}/chat/completions",
                "key": gateway.key,
                "model": config.gateway_model,
            }
        load = servers.LoadClient(stack, placement.load)
        move = throughput.single_move(config, placement, upstream_pid)

        def run(name: str, spec: throughput.PhaseSpec, duration: float) -> PhaseResult:
            pids = {"upstream": [upstream_pid]} | ({"gateway": gateways[name].pids} if name in gateways else {})
            command = {
                "target": targets[name],
                "stream": spec.stream,
                "concurrency": 1 if spec.single else config.concurrency,
                "duration": duration,
                "pids": pids,
                "redis_url": backends.REDIS_URL if name == "postgres+redis" else None,
            }
            with move.during(spec) if move else contextlib.nullcontext():
                return load.run(command, timeout=duration + 90)

        for name in TARGETS:  # warm-up: connections, caches; dropped
            for spec in throughput.PHASES:
                run(name, spec, config.warmup / 2)
        for number in range(config.rounds):
            print(f"round {number + 1}/{config.rounds}", file=sys.stderr)
            order = TARGETS[number % 3 :] + TARGETS[: number % 3]
            for spec in throughput.PHASES:
                for name in order:
                    result = run(name, spec, config.duration)
                    results.setdefault(f"{name}/{spec.name}", []).append(result)
                    rate = result.requests / result.elapsed if result.elapsed else 0.0
                    print(f"  {spec.name:<14} {name:<15} {rate:9,.0f}/s", file=sys.stderr)
    return results


def rows(results: dict[str, list[PhaseResult]], c: int) -> list[list[str]]:
    def view(gateway: str) -> dict[str, list[PhaseResult]]:
        """The results as a default run files them: the direct ones, and this gateway's as "gateway"."""
        out: dict[str, list[PhaseResult]] = {}
        for key, runs in results.items():
            target, _, phase = key.partition("/")
            if target in ("direct", gateway):
                out[f"{'gateway' if target == gateway else target}/{phase}"] = runs
        return out

    tables = [throughput.build_rows(view(name), (None, None), c) for name in TARGETS[1:]]
    out = []
    for base, other in zip(*tables, strict=True):
        if base.metric.startswith("gateway RSS"):
            continue
        share = compare.rating(base.metric, base.gateway or 0.0, other.gateway or 0.0, 1)
        out.append([base.metric, _cell(base.direct), _cell(base.gateway), _cell(other.gateway), share])
    return out


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}" if value < 100 else f"{value:,.0f}"


def main(argv: Sequence[str]) -> int:
    config = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    load_before = procs.load_average()
    results = measure(config)
    header = ["metric", "direct", "SQLite", "PostgreSQL + Redis", "PostgreSQL + Redis vs SQLite"]
    table = rows(results, config.concurrency)
    print(report.render_rows(header, table))
    print(throughput.busy_note((load_before, procs.load_average())))
    document: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": report.machine()}
    document |= {"header": header, "table": table, "rounds": config.rounds, "duration": config.duration}
    document["phases"] = {name: [report.summarize(r) for r in rs] for name, rs in results.items()}
    report.write_json(document, started, "backends-ab")
    problems = report.errors(results)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0
