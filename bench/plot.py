"""`python -m bench.plot`: p50 latency against concurrency, direct and through the gateway, as a PNG.

Runs `python -m bench` once per concurrency (non-streamed phase `load`), reads each run's JSON from
bench/results/ and draws docs/performance-latency.png. Needs matplotlib (`pip install -e '.[bench]'`).
With `--litellm-url` and `--litellm-key` (LiteLLM's proxy running, pointed at the fake upstream on
`--upstream-port`: bench/README.md), each concurrency is measured through LiteLLM too, right after aipower, and
drawn as a third line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUT = Path(__file__).parent.parent / "docs" / "performance-latency.png"


def measure(concurrency: int, rounds: int, duration: float, extra: Sequence[str]) -> dict[str, Any]:
    """One bench run at `concurrency`; its JSON report."""
    before = set(RESULTS.glob("*.json"))
    argv = [sys.executable, "-m", "bench", "--concurrency", str(concurrency), "--rounds", str(rounds)]
    subprocess.run([*argv, "--duration", str(duration), *extra], check=True, capture_output=True)
    (written,) = set(RESULTS.glob("*.json")) - before
    data: dict[str, Any] = orjson.loads(written.read_bytes())
    return data


def litellm_args(url: str | None, key: str | None, upstream_port: int) -> list[str] | None:
    """The bench options that measure LiteLLM's proxy instead of aipower (None: LiteLLM is not measured)."""
    if not url:
        return None
    return ["--gateway-url", url, "--gateway-key", key or "", "--upstream-port", str(upstream_port)]


def p50(report: dict[str, Any], concurrency: int) -> tuple[float, float]:
    # The first such row is the `load` phase (at c=1 the `single` phase has the same name).
    row = next(r for r in report["rows"] if r["metric"] == f"latency p50 ms, c={concurrency}")
    return float(row["direct"]), float(row["gateway"])


def draw(points: dict[int, tuple[float, float]], out: Path, title: str, litellm: dict[int, float]) -> None:
    import matplotlib  # optional: only this script needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(points)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(levels, [points[c][0] for c in levels], "o-", label="direct (fake upstream)")
    ax.plot(levels, [points[c][1] for c in levels], "s-", label="through aipower")
    if litellm:
        ax.plot(levels, [litellm[c] for c in levels], "^-", label="through LiteLLM's proxy")
        ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("p50 latency, ms")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    parser.add_argument("--levels", default="1,4,16,32,64", help="concurrencies [1,4,16,32,64]")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--title", default="p50 latency, non-streamed chat completions (SQLite, billing on)")
    parser.add_argument("--litellm-url", help="also measure LiteLLM's proxy at this URL (e.g. http://127.0.0.1:4000)")
    parser.add_argument("--litellm-key", help="LiteLLM's master key")
    parser.add_argument("--upstream-port", type=int, default=9911, help="with --litellm-url: the fake's port [9911]")
    parser.add_argument("bench_args", nargs="*", help="passed to python -m bench (after --)")
    args = parser.parse_args(argv)
    other = litellm_args(args.litellm_url, args.litellm_key, args.upstream_port)
    points: dict[int, tuple[float, float]] = {}
    litellm: dict[int, float] = {}
    for level in (int(x) for x in args.levels.split(",")):
        points[level] = p50(measure(level, args.rounds, args.duration, args.bench_args), level)
        print(f"c={level}: direct {points[level][0]:.3f} ms, gateway {points[level][1]:.3f} ms", flush=True)
        if other is not None:
            litellm[level] = p50(measure(level, args.rounds, args.duration, [*args.bench_args, *other]), level)[1]
            print(f"c={level}: LiteLLM {litellm[level]:.3f} ms", flush=True)
    draw(points, args.out, args.title, litellm)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
