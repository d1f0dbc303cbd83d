"""Turning phase results into the table (metric | direct | gateway | ratio) and the JSON file."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.load import PhaseResult

RESULTS = Path(__file__).parent / "results"

Value = float | None


@dataclass(frozen=True, slots=True)
class Row:
    metric: str
    direct: Value
    gateway: Value
    digits: int = 1

    @property
    def ratio(self) -> Value:
        if self.direct is None or self.gateway is None or self.direct == 0:
            return None
        return self.gateway / self.direct

    def as_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "direct": self.direct, "gateway": self.gateway, "ratio": self.ratio}


def percentile(samples: Sequence[float], q: float) -> Value:
    """The q-th percentile (0-100) by nearest rank; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def rate(results: Sequence[PhaseResult]) -> Value:
    """Median over rounds of completed requests per second."""
    rates = [r.requests / r.elapsed for r in results if r.elapsed > 0]
    return statistics.median(rates) if rates else None


def pooled(results: Sequence[PhaseResult], attribute: str) -> list[float]:
    samples: list[float] = []
    for result in results:
        samples.extend(getattr(result, attribute))
    return samples


def cpu_ms_per_request(results: Sequence[PhaseResult], process: str) -> Value:
    requests = sum(r.requests for r in results)
    seconds = sum(r.cpu_seconds.get(process, 0.0) for r in results)
    if not requests or not any(process in r.cpu_seconds for r in results):
        return None
    return seconds / requests * 1000


def difference(a: Value, b: Value) -> Value:
    return None if a is None or b is None else a - b


def _cell(value: Value, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_table(rows: Sequence[Row]) -> str:
    """A Markdown table, so the same text can be pasted into bench/README.md."""
    lines = ["| metric | direct | gateway | ratio (gateway/direct) |", "| --- | ---: | ---: | ---: |"]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.3g}x"
        lines.append(f"| {row.metric} | {_cell(row.direct, row.digits)} | {_cell(row.gateway, row.digits)} | {ratio} |")
    return "\n".join(lines)


def summarize(result: PhaseResult) -> dict[str, Any]:
    """One phase of one round, for the JSON file (samples reduced to percentiles)."""
    return {
        "requests": result.requests,
        "errors": result.errors,
        "first_error": result.first_error,
        "elapsed_s": result.elapsed,
        "per_second": result.requests / result.elapsed if result.elapsed else None,
        "p50_ms": percentile(result.latencies_ms, 50),
        "p99_ms": percentile(result.latencies_ms, 99),
        "first_frame_p50_ms": percentile(result.first_frame_ms, 50),
        "frames_per_stream": statistics.median(result.frames) if result.frames else None,
        "cpu_seconds": result.cpu_seconds,
    }


def errors(by_phase: Mapping[str, Sequence[PhaseResult]]) -> list[str]:
    found = []
    for name, results in by_phase.items():
        count = sum(r.errors for r in results)
        if count:
            first = next(r.first_error for r in results if r.first_error)
            found.append(f"{name}: {count} errors, first: {first}")
    return found


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, Python, OS, and which aipower tree was measured.

    `BENCH_COMMIT` names the commit when the tree is an extracted copy (git archive) outside the repository.
    """
    spec = importlib.util.find_spec("aipower")
    source = Path(spec.origin).parent if spec is not None and spec.origin else None
    where = source.parent if source is not None else RESULTS.parent
    git = ["git", "-C", str(where)]
    done = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "aipower"], capture_output=True, text=True, check=False
    )
    commit = os.environ.get("BENCH_COMMIT") or (done.stdout.strip() if done.returncode == 0 else None)
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aipower_source": str(source),
        "commit": commit,
        "aipower_tree_modified": bool(dirty.stdout.strip()) if done.returncode == 0 else None,
    }


def write_json(document: Mapping[str, Any], started: dt.datetime, scenario: str = "") -> Path:
    """bench/results/<UTC start>[-<scenario>].json (gitignored)."""
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-{scenario}" if scenario else ""
    path = RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}{suffix}.json"
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    print(f"wrote {path}", file=sys.stderr)
    return path


def render_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of ready-made cells; the first column left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
