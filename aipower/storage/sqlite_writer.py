"""The ledger's SQLite transactions: plain sqlite3 connections, small uncontended batches inline, the rest on one
writer thread. Storage layer.

A lone caller's batch (one reserve or one settle) is a few statements and a WAL commit, about 50-100 us, and a
commit in WAL mode with synchronous=NORMAL does not fsync. Sending it to a thread and back cost more than the
transaction (two context switches and a loop wake-up), so such a batch runs on the event loop itself, with a
busy timeout of 0: if another connection or process holds the write lock, BEGIN fails at once and the batch goes
to the writer thread, which waits for the lock as before. Large batches (a loaded gateway) also go to the thread,
so SQLite's work there overlaps with the loop. Either way a batch is one transaction, committed before run()
returns.

Checkpoints (the only fsyncs) never run on the loop: the inline connection has wal_autocheckpoint=0, and every
`checkpoint_every` inline commits the thread runs a PASSIVE checkpoint in two passes. The first copies the WAL
while inline batches go on; it takes most of the time (its fsyncs: about 30 ms per 256 calls on a slow host). The
second copies what they added meanwhile, and while it runs no batch runs inline: they wait on the thread, behind it.
From the moment it asks for the inline lock, no inline batch takes it again: a loop committing back to back
would otherwise win the lock every time (a lock is not fair), and on a fast host the second pass waited hundreds
of commits.
So the checkpoint copies the whole WAL into the database, and the next commit restarts the WAL from its start
(unless a reader still uses it; the next checkpoint tries again). A checkpoint beside a steady inline writer never
caught up with it: the WAL was never restarted and grew without end (about 70 KB per call, 2 GB after 30,000 calls
at c=1), and every commit extended the file. Holding inline batches off for the whole checkpoint instead cost a lone
caller about 20% of its ledger time, waiting. When the WAL restarts, the file is cut back to `journal_size_limit`
(WAL_LIMIT_BYTES).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.dialects import sqlite

from aipower.storage.batch import BatchConnection, SqliteBatch, Statements

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(slots=True)
class WriterStats:
    inline: int = 0  # transactions run on the event loop
    threaded: int = 0  # transactions run on the writer thread
    checkpoints: int = 0


WAL_LIMIT_BYTES = 64 * 1024 * 1024


class SqliteWriter:
    """Transactions for one SQLite file; implements db.Transactions."""

    def __init__(self, path: str, *, inline_max_ops: int = 8, checkpoint_every: int = 256) -> None:
        self._path = path
        self._inline_max_ops = inline_max_ops
        self._checkpoint_every = checkpoint_every
        self._since_checkpoint = 0
        self._statements = Statements(sqlite.dialect())
        self._inline: sqlite3.Connection | None = None
        self._threaded: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="aipower-sqlite-writer")
        self._checkpointing: Future[None] | None = None
        self._finishing = threading.Lock()  # held by a checkpoint's last pass: no inline batch meanwhile
        self._draining = False  # that pass waits for the lock: inline batches step aside (threading.Lock is not fair)
        self.stats = WriterStats()

    def run_now(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T | None:
        """Run `work` in one transaction right here if it is small and the write lock is free; None if not run.
        `durable` changes nothing: no commit here fsyncs (WAL, synchronous=NORMAL), and each survives a crash of
        the process."""
        connection = self._begin_inline(ops)
        return None if connection is None else self._commit_inline(connection, work)

    async def run(self, work: Callable[[BatchConnection], T], ops: int = 1, *, durable: bool = True) -> T:
        """Run `work` in one transaction of this file; `ops` (the batch's size) decides where."""
        connection = self._begin_inline(ops)
        if connection is not None:
            return self._commit_inline(connection, work)
        result = await asyncio.get_running_loop().run_in_executor(self._thread, self._on_thread, work)
        self.stats.threaded += 1
        return result

    def _begin_inline(self, ops: int) -> sqlite3.Connection | None:
        if ops > self._inline_max_ops or self._draining or not self._finishing.acquire(blocking=False):
            return None  # a large batch, or a checkpoint finishing: on the thread
        try:
            connection = self._inline or self._connect_inline()
            connection.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._finishing.release()  # held on, it would stop every later batch, and the checkpoint, for good
            if isinstance(exc, sqlite3.OperationalError):
                return None  # the write lock is taken (another process, the request log): wait for it on the thread
            raise
        return connection

    def _commit_inline(self, connection: sqlite3.Connection, work: Callable[[BatchConnection], T]) -> T:
        try:
            result = _finish(connection, work, self._statements)
        finally:
            self._finishing.release()
        self.stats.inline += 1
        self._count_commit()
        return result

    def _count_commit(self) -> None:
        """Start a checkpoint on the thread (not waited for) once enough inline commits piled up in the WAL: a WAL
        that only grows makes every commit extend the file, which cost 3-5x a commit into a restarted WAL."""
        self._since_checkpoint += 1
        if self._since_checkpoint < self._checkpoint_every:
            return
        if self._checkpointing is None or self._checkpointing.done():
            self._since_checkpoint = 0
            self.stats.checkpoints += 1
            self._checkpointing = self._thread.submit(self._checkpoint)

    def _on_thread(self, work: Callable[[BatchConnection], T]) -> T:
        connection = self._thread_connection()
        connection.execute("BEGIN IMMEDIATE")  # the write lock up front, not at the first write
        return _finish(connection, work, self._statements)

    def _checkpoint(self) -> None:
        """Two passes: the first copies the WAL while inline batches go on (its fsyncs are most of a checkpoint's
        time); the second, with inline batches held off, copies what they added meanwhile, so the WAL is copied
        whole and the next commit restarts it."""
        try:
            connection = self._thread_connection()
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._draining = True
            try:
                with self._finishing:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                self._draining = False
        except sqlite3.Error:  # the next one retries; the data is safe in the WAL meanwhile
            logger.warning("ledger: WAL checkpoint failed", exc_info=True)

    def _thread_connection(self) -> sqlite3.Connection:
        if self._threaded is None:
            self._threaded = _connect(self._path, timeout=30)  # this one has the default autocheckpoint too
        return self._threaded

    def _connect_inline(self) -> sqlite3.Connection:
        connection = _connect(self._path, timeout=0)
        connection.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (fsync) happen on the thread only (no lock)
        self._inline = connection
        return connection

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._disconnect)
        self._thread.shutdown(wait=False)

    def _disconnect(self) -> None:
        for connection in (self._inline, self._threaded):
            if connection is not None:
                connection.close()
        self._inline = self._threaded = None


def _finish(connection: sqlite3.Connection, work: Callable[[BatchConnection], T], statements: Statements) -> T:
    """Run `work` inside the transaction BEGIN opened, and commit it (roll back if anything fails)."""
    try:
        result = work(SqliteBatch(connection, statements))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _connect(path: str, timeout: float) -> sqlite3.Connection:
    """A configured connection; with timeout 0 its set-up fails (closed, OperationalError) while another connection
    holds a lock, e.g. one closing, which checkpoints the WAL."""
    # isolation_level=None: the sqlite3 module issues no BEGIN/COMMIT of its own; ours are the only ones.
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    except BaseException:
        connection.close()
        raise
    return connection
