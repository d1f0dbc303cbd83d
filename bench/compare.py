"""`python -m bench backends`: the default table on the embedded defaults and on PostgreSQL + Redis, 1 and 2 processes.

Three runs in one session with the same settings (`--rounds`, `--duration`, `--concurrency` as for `python -m
bench`): SQLite with in-process limits and one process (the baseline), then a fresh PostgreSQL database with
rate limits on Redis (a private key prefix) with `aipower serve --workers 1` and `--workers 2`. The database is
dropped and the keys deleted afterwards. One worker is pinned alone to a core; two workers run unpinned on
both cores, which they share with the load generator, the fake upstream, PostgreSQL and Redis. Issue 8's
target: per process, at least 70% of the embedded figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from collections.abc import Sequence
from typing import Any

from bench import report, throughput

TARGET = 0.70
# (row name prefix, higher is better): the rows compared against the target
_RATED = (("requests/s", True), ("streams/s", True), ("latency p50 ms, c=1", False), ("added latency", False))


def parse_args(argv: Sequence[str]) -> throughput.Config:
    parser = argparse.ArgumentParser(prog="python -m bench backends", description=__doc__)
    throughput.add_arguments(parser)
    return throughput.config_from(parser, parser.parse_args(argv))


def runs(config: throughput.Config) -> list[tuple[str, throughput.Config]]:
    base = dataclasses.replace(config, backend="sqlite", redis=False, workers=1)
    pg = dataclasses.replace(config, backend="postgres", redis=True)
    return [
        ("SQLite, 1 process", base),
        ("PostgreSQL + Redis, 1 process", dataclasses.replace(pg, workers=1)),
        ("PostgreSQL + Redis, 2 processes", dataclasses.replace(pg, workers=2)),
    ]


def rating(metric: str, base: float, value: float, workers: int) -> str:
    for prefix, higher in _RATED:
        if metric.startswith(prefix) and base and value:
            share = value / workers / base if higher else base / value
            verdict = "met" if share >= TARGET else "NOT met"
            return f"{share:.0%} ({verdict})"
    return ""


def table(documents: Sequence[tuple[str, int, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """metric | baseline | each other run and its per-process share of the baseline."""
    header = ["metric", documents[0][0]]
    for label, _, _ in documents[1:]:
        header += [label, "per process vs baseline"]
    rows = []
    for index, row in enumerate(documents[0][2]["rows"]):
        metric = row["metric"]
        base = row["gateway"]
        cells = [metric, _cell(base)]
        for _, workers, document in documents[1:]:
            value = document["rows"][index]["gateway"]
            cells += [_cell(value), rating(metric, base or 0.0, value or 0.0, workers)]
        rows.append(cells)
    return header, rows


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}" if value < 100 else f"{value:,.0f}"


def main(argv: Sequence[str]) -> int:
    config = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    documents = []
    for label, run_config in runs(config):
        print(f"{label} ...", file=sys.stderr)
        run = throughput.execute(run_config)
        documents.append((label, run_config.workers, throughput.document(run_config, run, started)))
    header, rows = table(documents)
    print(report.render_rows(header, rows))
    print("per process: throughput / processes / baseline; latency: baseline / value. Target >= 70%.")
    document: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": report.machine()}
    document |= {"header": header, "table": rows, "runs": {label: doc for label, _, doc in documents}}
    report.write_json(document, started, "backends")
    problems = [p for _, _, doc in documents for p in doc["errors"]]
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0
