"""Lua script calls issued together go to Redis as one pipeline: one round trip for many calls. Storage layer.

Under load many calls want Redis at once (each admission and each finish is one script call), so `ScriptPipeline`
group-commits them, like the ledger does its transactions: a call queues its command and waits; one writer task sends
everything queued at once (`EVALSHA` each) and answers each caller from its own reply; while one exchange is in
flight the next one gathers. Nobody waits for a timer, and a lone call costs one round trip. Queued commands run in
the order they were queued; a lone call may be overtaken by one queued after it (no caller issues a call that
depends on another still in flight).

Every exchange uses the pipeline's own connection, taken from the client's pool once and kept, one exchange at a
time: redis-py's `Pipeline` (and a plain command) checks a connection out of the pool and back, wraps it in retries
and reply callbacks, which cost about half the CPU of a small exchange (see docs/performance.md). An error reply is
that call's reply; any other failure (a timeout, a dropped connection, a cancelled caller mid-exchange) makes
redis-py close the connection, so no reply still owed can reach a later exchange, and the next one reconnects.

Scripts are sent as `EVALSHA`; a Redis that lost its script cache (restarted, or `SCRIPT FLUSH`) answers NOSCRIPT,
and the script is loaded and the command sent again. A connection error fails every call of its exchange.
A caller that goes away before its exchange is sent is dropped; after, its reply is dropped too. (A lone call, sent
while nothing else is in flight, goes straight out on its own.) A caller that must undo what its command did, should
the caller go away or its answer be lost, sends the undoing command itself (RedisLimiter.admit does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | int | float


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    text: str
    sha: str


@dataclass(frozen=True, slots=True)
class _Command:
    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]


@dataclass(frozen=True, slots=True)
class _Call:
    command: _Command
    answer: asyncio.Future[Any]


class ScriptPipeline:
    def __init__(self, redis: Redis, max_batch: int = 256) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._queue: list[_Call] = []
        self._writer: asyncio.Task[None] | None = None
        self._alone = False  # a lone call is in flight outside the pipeline
        self._connection: AbstractConnection | None = None
        self._exchanging = asyncio.Lock()  # one exchange at a time on the connection
        # The client's socket timeout bounds each whole exchange here (one timer, not a task per send and a timer
        # per reply, as redis-py's own per-call timeouts cost); the kept connection has none of its own.
        self._timeout: float | None = redis.connection_pool.connection_kwargs.get("socket_timeout")

    def script(self, text: str) -> Script:
        return Script(text, self._redis.register_script(text).sha)

    async def call(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """The script's reply, once the exchange that carried it has been answered. With nothing else in flight
        the call goes out at once from the caller's task (no writer task, no future)."""
        if self._queue or self._alone or (self._writer is not None and not self._writer.done()):
            return await self.send(script, keys, args)
        self._alone = True
        try:
            (reply,) = await self._send([_Command(script, keys, args)])
        finally:
            self._alone = False
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def send(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> asyncio.Future[Any]:
        """Queue the call; its reply arrives on the future (which may be left unawaited: its error is then dropped)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_consume)
        self._queue.append(_Call(_Command(script, keys, args), answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="redis-pipeline")
        return answer

    async def close(self) -> None:
        """Wait until everything queued has been sent and answered; then give the connection back to the pool."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.socket_timeout = self._timeout  # the pool's other users rely on it: their calls have no timer
            await self._redis.connection_pool.release(connection)

    async def _write(self) -> None:
        while self._queue:
            batch = [c for c in self._queue[: self._max_batch] if not c.answer.cancelled()]
            self._queue = self._queue[self._max_batch :]
            if not batch:
                continue
            try:
                replies = await asyncio.shield(self._send([call.command for call in batch]))
            except Exception as exc:  # noqa: BLE001 - the connection failed: every call of the pipeline gets it
                replies = [exc] * len(batch)
            for call, reply in zip(batch, replies, strict=True):
                _answer(call, reply)

    async def _send(self, batch: Sequence[_Command]) -> list[Any]:
        replies = await self._exchange([_evalsha(c) for c in batch])
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis lost its scripts: load them, then send those commands again, in one more exchange
            texts = list(dict.fromkeys(batch[i].script.text for i in missing))
            commands = [("SCRIPT", "LOAD", t) for t in texts] + [_evalsha(batch[i]) for i in missing]
            try:
                again = await self._exchange(commands)
            except Exception as exc:  # noqa: BLE001 - only the commands sent again failed: the others ran, and keep
                again = [exc] * len(commands)  # their replies (an admission that counted is not reported as failed)
            for i, reply in zip(missing, again[len(texts) :], strict=True):
                replies[i] = reply
        return replies

    async def _exchange(self, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """Every command's reply (an error reply as its exception), sent at once on the pipeline's connection."""
        async with self._exchanging:
            try:
                async with asyncio.timeout(self._timeout):
                    return await self._send_and_read(commands)
            except TimeoutError as exc:  # the connection was closed mid-exchange (redis-py does on cancellation)
                raise RedisTimeoutError(f"Redis did not answer within {self._timeout}s") from exc

    async def _send_and_read(self, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        if self._connection is None:
            self._connection = await self._redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            self._connection.socket_timeout = None  # the exchange's timer covers it
        connection = self._connection
        await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:  # Redis's answer to this command, read whole: the next follows
                replies.append(error)
        return replies


def _evalsha(command: _Command) -> tuple[Arg, ...]:
    return ("EVALSHA", command.script.sha, len(command.keys), *command.keys, *command.args)


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark an unawaited call's error as seen (asyncio would log it as never retrieved)."""
    if not future.cancelled():
        future.exception()


def _answer(call: _Call, reply: Any) -> None:
    if call.answer.cancelled():
        return
    if isinstance(reply, BaseException):
        call.answer.set_exception(reply)
    else:
        call.answer.set_result(reply)
