"""The SQLite writer: small batches commit inline, large or contended ones on the writer thread, checkpoints run
off the caller's path, a failed batch leaves nothing behind, compiled statements bind what SQLAlchemy binds; and
the ledger's lone call, which skips the queue, still waits for a write lock held elsewhere."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from aipower.storage import accounts, db, ledger
from aipower.storage.batch import BatchConnection
from aipower.storage.ledger_sql import CLOSE_HOLD, INSERT_HOLD, OPEN_HOLDS
from aipower.storage.sqlite_writer import SqliteWriter
from aipower.storage.tables import holds
from tests.storage.test_ledger import USD, hold_request, new_account, settlement

NOW = dt.datetime(2026, 11, 25, 20, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture
def path(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'writer.db'}"
    db.upgrade(url)
    return str(tmp_path / "writer.db")


def _hold(hold_id: str, key_id: str) -> dict[str, object]:
    return {"id": hold_id, "user_id": 1, "key_id": key_id, "request_id": "r-" + hold_id, "amount_nanos": 5,
            "mode": "balance", "spend_day": "2026-11-25", "created_at": NOW}  # fmt: skip


async def _account(path: str) -> str:
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        return (await new_account(engine, "1"))[1]
    finally:
        await engine.dispose()


def _insert(*hold_ids: str, key_id: str) -> Callable[[BatchConnection], int]:
    def work(conn: BatchConnection) -> int:
        conn.run_many(INSERT_HOLD, [_hold(h, key_id) for h in hold_ids])
        return len(conn.fetch(OPEN_HOLDS, {"p_ids": list(hold_ids)}))

    return work


async def test_a_small_batch_commits_inline_and_a_large_one_on_the_thread(path: str) -> None:
    key_id = await _account(path)
    writer = SqliteWriter(path, inline_max_ops=2)
    assert await writer.run(_insert("a", key_id=key_id), ops=1) == 1
    assert await writer.run(_insert("b", "c", "d", key_id=key_id), ops=3) == 3
    await writer.close()
    assert (writer.stats.inline, writer.stats.threaded) == (1, 1)
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM holds").fetchone() == (4,)


async def test_a_first_batch_while_another_connection_locks_the_file_waits_on_the_thread(path: str) -> None:
    """The inline connection is made at the first batch, with a busy timeout of 0: if another connection holds the
    file then (one closing checkpoints the WAL under an exclusive lock), the batch waits on the thread instead of
    failing with "database is locked"."""
    key_id = await _account(path)
    writer = SqliteWriter(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("COMMIT")  # in exclusive locking mode the lock outlives the transaction
    task = asyncio.create_task(writer.run(_insert("a", key_id=key_id)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()
    other.close()
    assert await task == 1
    assert await writer.run(_insert("b", key_id=key_id)) == 1  # and the next one inline, the file being free
    await writer.close()
    assert (writer.stats.inline, writer.stats.threaded) == (1, 1)


async def test_a_failure_to_open_the_inline_connection_does_not_stop_later_batches(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while opening the inline connection reaches its caller; the batches after it still
    commit inline, and the checkpoint still runs."""
    key_id = await _account(path)
    writer = SqliteWriter(path, checkpoint_every=2)
    opened = SqliteWriter._connect_inline

    def failing_once(self: SqliteWriter) -> sqlite3.Connection:
        monkeypatch.setattr(SqliteWriter, "_connect_inline", opened)
        raise sqlite3.DatabaseError("file is not a database")

    monkeypatch.setattr(SqliteWriter, "_connect_inline", failing_once)
    with pytest.raises(sqlite3.DatabaseError):
        await writer.run(_insert("a", key_id=key_id))
    for i in range(4):
        assert await writer.run(_insert(f"b{i}", key_id=key_id)) == 1
    await asyncio.wait_for(writer.close(), timeout=30)  # behind the checkpoints on the thread
    assert (writer.stats.inline, writer.stats.threaded) == (4, 0)
    assert writer.stats.checkpoints >= 1


async def test_a_batch_waits_on_the_thread_while_another_connection_holds_the_write_lock(path: str) -> None:
    key_id = await _account(path)
    writer = SqliteWriter(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    task = asyncio.create_task(writer.run(_insert("a", key_id=key_id)))
    for _ in range(20):  # the loop keeps running: the batch is not blocking it, it waits on the thread
        await asyncio.sleep(0)
    assert not task.done()
    other.execute("COMMIT")
    assert await task == 1
    await writer.close()
    other.close()
    assert (writer.stats.inline, writer.stats.threaded) == (0, 1)


async def test_a_failing_batch_rolls_back_and_the_next_one_commits(path: str) -> None:
    key_id = await _account(path)
    writer = SqliteWriter(path)

    def fails(conn: BatchConnection) -> None:
        conn.run_many(INSERT_HOLD, [_hold("x", key_id)])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await writer.run(fails)
    assert await writer.run(_insert("y", key_id=key_id)) == 1
    await writer.close()
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT id FROM holds").fetchall() == [("y",)]


async def test_checkpoints_run_every_n_inline_commits(path: str) -> None:
    key_id = await _account(path)
    writer = SqliteWriter(path, checkpoint_every=10)
    for i in range(35):
        await writer.run(_insert(f"h{i}", key_id=key_id))
    await writer.close()
    assert 1 <= writer.stats.checkpoints <= 3  # one per 10 commits, unless the previous one is still running
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM holds").fetchone() == (35,)


def _wal_pages(path: str) -> int:
    return Path(path + "-wal").stat().st_size // 4096


async def test_a_steady_writer_keeps_the_wal_small(path: str) -> None:
    """Inline commits back to back, as one caller after another makes them: the checkpoint must still restart the
    WAL, or it grows by every commit's pages for as long as the gateway runs. How large it gets between restarts
    depends on how many commits a checkpoint's fsyncs last (about 100 on a fast host); that it stops growing does
    not."""
    key_id = await _account(path)
    writer = SqliteWriter(path, checkpoint_every=20)
    sizes = []
    for i in range(3000):
        await writer.run(_insert(f"h{i}", key_id=key_id))
        if i + 1 in (1500, 3000):
            sizes.append(_wal_pages(path))  # before close(): the last connection to close removes the WAL
    await writer.close()
    at_1500, at_3000 = sizes
    # Without restarts each commit adds its 2+ pages: 3,000+ pages by 1,500 commits, 3,000+ more by 3,000. With them
    # the file is reused from its start, and grows only when a stretch between restarts is longer than any before.
    assert at_1500 < 1500
    assert at_3000 - at_1500 < 1500
    assert writer.stats.checkpoints >= 20
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM holds").fetchone() == (3000,)


async def test_a_lone_call_writes_few_pages(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every page a call's two commits touch is a WAL frame: two write system calls now, a copy and an fsync at the
    next checkpoint. Open holds have an index of their own (settled ones leave it) and the request log has no index
    that no query uses: at most 15 pages per call (14.4 measured; 16.4 before)."""
    monkeypatch.setattr(SqliteWriter, "__init__", _no_checkpoints(SqliteWriter.__init__))
    engine = db.make_engine(f"sqlite:///{path}")
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    for _ in range(20):  # the tables' and indexes' right-most pages exist
        await book.settle(settlement(await book.reserve(hold_request(user_id, key_id, 1000)), 300))
    before = _wal_pages(path)
    for _ in range(200):
        await book.settle(settlement(await book.reserve(hold_request(user_id, key_id, 1000)), 300))
    per_call = (_wal_pages(path) - before) / 200
    await book.close()
    await engine.dispose()
    assert per_call <= 15, per_call


def _no_checkpoints(init: Callable[..., None]) -> Callable[..., None]:
    def without(self: SqliteWriter, path: str, **options: int) -> None:
        init(self, path, **{**options, "checkpoint_every": 10**9})

    return without


async def test_compiled_statements_store_what_sqlalchemy_reads_back(path: str) -> None:
    key_id = await _account(path)
    writer = SqliteWriter(path)
    await writer.run(_insert("a", "b", key_id=key_id))

    def close_one(conn: BatchConnection) -> int:
        return conn.run(CLOSE_HOLD, {"p_hid": "a", "p_now": NOW, "p_charged": 3})

    assert await writer.run(close_one) == 1
    assert await writer.run(close_one) == 0  # the guard: a hold is closed once
    await writer.close()
    engine = db.make_engine(f"sqlite:///{path}")
    async with engine.connect() as conn:
        rows = (await conn.execute(select(holds.c.id, holds.c.created_at, holds.c.settled_at).order_by("id"))).all()
    await engine.dispose()
    naive = NOW.replace(tzinfo=None)  # SQLite keeps UTC datetimes without their zone
    assert [(r.id, r.created_at, r.settled_at) for r in rows] == [("a", naive, naive), ("b", naive, None)]


async def test_a_lone_call_with_the_write_lock_taken_waits_for_it_and_commits(path: str) -> None:
    engine = db.make_engine(f"sqlite:///{path}")
    user_id, key_id = await new_account(engine, "1")
    book = ledger.SqlLedger(engine)
    hold = await book.reserve(hold_request(user_id, key_id, 1000))  # alone, lock free: committed in the caller
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. `aipower credits add` in another process
    settling = asyncio.create_task(book.settle(settlement(hold, 400)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not settling.done()  # not answered before its commit, and the loop was not blocked meanwhile
    other.execute("COMMIT")
    other.close()
    assert await settling == 400
    await book.close()
    balance = await accounts.balance(engine, user_id)
    await engine.dispose()
    assert (balance.balance_nanos, balance.held_nanos) == (USD - 400, 0)
