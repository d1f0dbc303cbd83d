"""Turning phase results into the table (metric | direct | gateway | ratio) and the JSON file."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.load import PhaseResult

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
