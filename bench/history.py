"""`python -m bench history`: the default table on an empty database, then on one with 10 million calls of history.

Both runs are in the same session with the same settings (`--rounds`, `--duration`, `--backend`, ... as for
`python -m bench`). Before the second gateway starts, bench/history_sql.py fills its database: `--rows` rows in
request_log, as many in ledger and as many settled holds, `--users` users and `--keys` keys. The generation is
timed. Issue 8's target: the same throughput with the history as without (cost grows with the work, not with
history).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncpg

from bench import history_sql, report, throughput
from bench.history_sql import History


def parse_args(argv: Sequence[str]) -> tuple[throughput.Config, History]:
    parser = argparse.ArgumentParser(prog="python -m bench history", description=__doc__)
    throughput.add_arguments(parser)
    parser.add_argument("--rows", type=int, default=10_000_000, help="request_log and ledger rows [10000000]")
    parser.add_argument("--users", type=int, default=10_000, help="users besides the bench user [10000]")
    parser.add_argument("--keys", type=int, default=20_000, help="API keys besides the bench key [20000]")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.users < 1 or args.keys < 1:
        parser.error("--rows, --users and --keys must be at least 1")
    return throughput.config_from(parser, args), History(args.rows, args.users, args.keys)


async def _postgres_key(url: str) -> str:
    connection = await asyncpg.connect(url, timeout=30)
    try:
        return str(await connection.fetchval("SELECT id FROM api_keys WHERE user_id = 1 LIMIT 1"))
    finally:
        await connection.close()


def fill(env: dict[str, str], history: History, notes: dict[str, Any]) -> None:
    """The `prepare` hook: runs with the gateway's environment once the bench user and key exist."""
    url = env["AIPOWER_DATABASE_URL"]
    print(f"filling the database with {history.rows:,} calls of history ...", file=sys.stderr)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path)) as connection:  # closed: the fill changes the journal mode
            key = str(connection.execute("SELECT id FROM api_keys WHERE user_id = 1").fetchone()[0])
        notes["seconds"] = history_sql.fill_sqlite(path, history, key)
        notes["rows"] = history_sql.row_counts_sqlite(path)
        notes["database_mib"] = sum(p.stat().st_size for p in Path(path).parent.glob("aipower.db*")) / 2**20
    else:
        notes["seconds"] = history_sql.fill_postgres(url, history, asyncio.run(_postgres_key(url)))
    print(f"  generated in {notes['seconds']:.0f} s", file=sys.stderr)


def compare(empty: dict[str, Any], full: dict[str, Any]) -> list[list[str]]:
    """metric | empty database | with history | ratio, for the gateway's figures of both runs."""
    table = []
    for before, after in zip(empty["rows"], full["rows"], strict=True):
        a, b = before["gateway"], after["gateway"]
        if a is None or b is None:
            continue
        ratio = f"{b / a:.2f}x" if a else "-"
        table.append([before["metric"], f"{a:,.3f}", f"{b:,.3f}", ratio])
    return table


def main(argv: Sequence[str]) -> int:
    config, history = parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    notes: dict[str, Any] = {}
    print("run 1: empty database", file=sys.stderr)
    empty = throughput.document(config, throughput.execute(config), started)
    print(f"run 2: {history.rows:,} calls of history", file=sys.stderr)
    full_run = throughput.execute(config, prepare=lambda env: fill(env, history, notes))
    full = throughput.document(config, full_run, started)
    table = compare(empty, full)
    label = f"{history.rows:,} calls"
    print(report.render_rows(("metric (gateway)", "empty database", label, "ratio"), table))
    print(f"history generated in {notes.get('seconds', 0):.0f} s; rows {notes.get('rows', '-')}")
    if "database_mib" in notes:
        print(f"SQLite files: {notes['database_mib']:,.0f} MiB")
    document: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": report.machine()}
    document |= {"history": asdict(history), "notes": notes}
    document |= {"table": table, "empty": empty, "with_history": full}
    report.write_json(document, started, "history")
    problems = empty["errors"] + full["errors"]
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0
