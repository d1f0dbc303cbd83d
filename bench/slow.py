"""`python -m bench slow-streams`: N concurrent slow streams (one chunk a second) held by one gateway process.

The fake upstream sends one content chunk per `--interval` seconds and ends every stream `--hold` seconds after
the latest one began, so all N are open together for at least that long. The client (bench/slow_load.py) opens
them at `--ramp` streams per second over a connector without a connection limit: a connection per stream, so the
gateway holds two sockets per stream. With `--http2` the callers speak HTTP/2 over cleartext (Node's http2
client, bench/slow_h2.mjs; the gateway runs with AIPOWER_HTTP2=1 and needs the http2 extra), `--per-connection`
streams on each connection, and the gateway holds about one socket per stream (the provider's). Meanwhile /proc of the
gateway is sampled twice a second: RSS, open file descriptors, CPU time. Issue 8's targets: no errors, and
under 100 MB resident. Open-file limits are raised in every process started (root may raise the hard limit).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import procs, report, servers

MIB = 2**20
_SAMPLE_SECONDS = 0.5
QS = ("50", "99", "100")  # percentiles of the per-stream figures in the client's summary


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.time()
    rss: int
    fds: int
    cpu: float


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench slow-streams", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000, help="concurrent streams N [10000]")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds all N stay open together (S) [10]")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between upstream chunks [1]")
    parser.add_argument("--ramp", type=float, default=500.0, help="new streams per second while opening [500]")
    parser.add_argument("--http2", action="store_true", help="callers speak h2c (needs node and the http2 extra)")
    parser.add_argument("--per-connection", type=int, default=100, help="with --http2: streams per connection [100]")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="more gateway environment")
    args = parser.parse_args(argv)
    if min(args.streams, args.per_connection) < 1 or min(args.hold, args.interval, args.ramp) <= 0:
        parser.error("--streams, --per-connection, --hold, --interval and --ramp must be positive")
    return args


def sample(pids: Sequence[int]) -> Sample:
    return Sample(time.time(), procs.rss_bytes(pids), procs.open_fds(pids), procs.cpu_seconds(pids))


def hold_streams(stack: contextlib.ExitStack, args: argparse.Namespace) -> dict[str, Any]:
    placement = procs.plan_cpus()
    # Each stream is an upstream socket in the gateway, and over HTTP/1.1 a caller's socket too.
    nofile = (1 if args.http2 else 2) * args.streams + 2000
    upstream_flags = ("--chunk-interval", str(args.interval), "--hold", str(args.hold))
    upstream_pid, upstream_port = servers.start_upstream(
        stack, placement.upstream, 0, upstream_flags, nofile=args.streams + 1000
    )
    env = (
        {
            "AIPOWER_MAX_CONCURRENT_PER_KEY": "0",  # no per-key cap on streams in flight
            "AIPOWER_UPSTREAM_MAX_CONNECTIONS": str(args.streams + 100),
        }
        | ({"AIPOWER_HTTP2": "1"} if args.http2 else {})
        | dict(item.partition("=")[::2] for item in args.env)
    )
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aipower-slow-")))
    options = servers.ServeOptions(env, nofile=nofile)
    gateway = servers.start_aipower(stack, placement.gateway, workdir, upstream_port, options)
    time.sleep(1.0)
    rest = sample(gateway.pids)
    timeout: float = args.streams / args.ramp + args.hold + 300
    plan: dict[str, Any] = {"url": f"{gateway.url}/chat/completions", "key": gateway.key}
    plan |= {"model": "deepseek/deepseek-chat", "streams": args.streams, "ramp": args.ramp, "timeout": timeout}
    if args.http2:
        plan["per_session"] = args.per_connection
        argv = ["node", str(Path(__file__).with_name("slow_h2.mjs")), orjson.dumps(plan).decode()]
    else:
        argv = [sys.executable, "-m", "bench.slow_load", orjson.dumps(plan).decode()]
    client = procs.spawn(argv, placement.load, nofile=nofile)
    stack.callback(procs.stop, client)
    samples = [rest]
    deadline = time.monotonic() + timeout + 60
    while client.poll() is None and time.monotonic() < deadline:
        time.sleep(_SAMPLE_SECONDS)
        samples.append(sample(gateway.pids))
    output, _ = client.communicate(timeout=30)
    time.sleep(2.0)  # let the gateway settle its last calls and free their buffers
    after = sample(gateway.pids)
    return {
        "outcome": orjson.loads(output.splitlines()[-1]),
        "samples": [asdict(s) for s in samples],
        "rest": asdict(rest),
        "after": asdict(after),
        "nofile": {"gateway": procs.nofile_limit(gateway.pids[0]), "upstream": procs.nofile_limit(upstream_pid)},
        "pids": {"gateway": gateway.pids, "upstream": upstream_pid},
    }


def summarize(run: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, str]]:
    """The table: the plateau is from the peak of open streams (all N, unless some failed) to the first end."""
    outcome, rest, after = run["outcome"], run["rest"], run["after"]
    samples = [Sample(**s) for s in run["samples"]]
    start, end = outcome["peak_at"], outcome["first_done_at"]
    plateau = [s for s in samples if start is not None and start <= s.at <= (end or start)]
    peak = max(samples, key=lambda s: s.rss)
    rows = [
        ("streams asked / completed / errors", f"{args.streams:,} / {outcome['completed']:,} / {outcome['errors']:,}"),
        ("peak streams open at once", f"{outcome['peak_open']:,}"),
        ("ramp: seconds to open all", f"{outcome['ramp_seconds']:.1f}"),
        ("all (the peak) open together, seconds", "-" if not plateau else f"{plateau[-1].at - plateau[0].at:.1f}"),
        ("gateway RSS MiB before", f"{rest['rss'] / MIB:.1f}"),
        ("gateway RSS MiB during (peak)", f"{peak.rss / MIB:.1f}"),
        ("gateway RSS MiB after", f"{after['rss'] / MIB:.1f}"),
        ("RSS KiB per stream (peak - before) / peak open", _per_stream(peak.rss - rest["rss"], outcome["peak_open"])),
        ("open fds before / peak / after", f"{rest['fds']:,} / {max(s.fds for s in samples):,} / {after['fds']:,}"),
        ("fd limit (gateway)", f"{run['nofile']['gateway']}"),
    ]
    if len(plateau) >= 2:
        seconds = plateau[-1].at - plateau[0].at
        busy = (plateau[-1].cpu - plateau[0].cpu) / seconds
        chunks = outcome["peak_open"] * seconds / args.interval
        rows.append(("gateway CPU while all open, % of a core", f"{busy * 100:.0f}"))
        rows.append(("gateway CPU us per relayed chunk", f"{busy * seconds / chunks * 1e6:.0f}"))
    total_cpu = after["cpu"] - rest["cpu"]
    rows.append(
        ("gateway CPU s, whole run / ms per stream", f"{total_cpu:.1f} / {total_cpu * 1000 / args.streams:.2f}")
    )
    for metric, name in (("longest content-chunk gap", "max_gap_ms"), ("wait for the last chunk", "tail_ms")):
        rows.append((f"{metric} per stream p50 / p99 / max, ms", " / ".join(_ms(outcome[name][q]) for q in QS)))
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _per_stream(grown: int, streams: int) -> str:
    return "-" if not streams else f"{grown / streams / 1024:.1f}"


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    with contextlib.ExitStack() as stack:
        try:
            run = hold_streams(stack, args)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
            print(f"slow-streams failed: {exc}", file=sys.stderr)
            return 1
    rows = summarize(run, args)
    callers = f"h2c, {args.per_connection} a connection" if args.http2 else "HTTP/1.1"
    print(report.render_rows(("metric", f"N={args.streams:,}, S={args.hold:g}s, {callers}"), rows))
    outcome = run["outcome"]
    document: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": report.machine()}
    document |= {"config": vars(args), "rows": dict(rows), "run": run, "load_average_1min": procs.load_average()}
    report.write_json(document, started, "slow-streams")
    if outcome["first_error"]:
        print(f"first error: {outcome['first_error']}", file=sys.stderr)
    return 1 if outcome["errors"] or outcome["completed"] != args.streams else 0
