"""Lua script calls issued together go to Redis as one pipeline: one round trip for many calls. Storage layer.

redis-py spends about 100 us of Python per round trip (connection checkout, socket write, reply wait, timeouts) and
much less per command inside a pipeline. Under load many calls want Redis at once (each admission and each finish
is one script call), so `ScriptPipeline` group-commits them, like the ledger does its transactions: a call queues
its command and waits; one writer task sends everything queued as one pipeline (`EVALSHA` each) and answers each
caller from its own reply; while one pipeline is in flight the next one gathers. Nobody waits for a timer, and a
lone call costs one round trip as before. Queued commands run in the order they were queued; a lone call may be
overtaken by one queued after it (no caller issues a call that depends on another still in flight).

Scripts are sent as `EVALSHA`; a Redis that lost its script cache (restarted, or `SCRIPT FLUSH`) answers NOSCRIPT,
and the script is loaded and the command sent again. A connection error fails every call of its pipeline.
A caller that goes away before its pipeline is sent is dropped; after, its reply goes to `orphan` (if given), so
the caller's owner can undo what the command did. (A lone call, sent while nothing else is in flight, goes
straight out as one EVALSHA; if its caller goes away meanwhile, the reply is lost, as with any plain command.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Arg = str | int | float
Orphan = Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    text: str
    sha: str


@dataclass(frozen=True, slots=True)
class _Call:
    script: Script
    keys: Sequence[str]
    args: Sequence[Arg]
    answer: asyncio.Future[Any]
    orphan: Orphan | None


class ScriptPipeline:
    def __init__(self, redis: Redis, max_batch: int = 256) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._queue: list[_Call] = []
        self._writer: asyncio.Task[None] | None = None
        self._alone = False  # a lone call is in flight outside the pipeline

    def script(self, text: str) -> Script:
        return Script(text, self._redis.register_script(text).sha)

    async def call(self, script: Script, keys: Sequence[str], args: Sequence[Arg], orphan: Orphan | None = None) -> Any:
        """The script's reply, once the pipeline that carried it has been answered. With nothing else in flight
        the call goes alone, as a plain EVALSHA (a pipeline of one costs more)."""
        if self._queue or self._alone or (self._writer is not None and not self._writer.done()):
            return await self.send(script, keys, args, orphan)
        self._alone = True
        try:
            return await self._evalsha(script, keys, args)
        finally:
            self._alone = False

    async def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._redis.script_load(script.text)
            return await self._redis.evalsha(script.sha, len(keys), *keys, *args)

    def send(
        self, script: Script, keys: Sequence[str], args: Sequence[Arg], orphan: Orphan | None = None
    ) -> asyncio.Future[Any]:
        """Queue the call; its reply arrives on the future (which may be left unawaited: its error is then dropped)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_consume)
        self._queue.append(_Call(script, keys, args, answer, orphan))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="redis-pipeline")
        return answer

    async def close(self) -> None:
        """Wait until everything queued has been sent and answered."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write(self) -> None:
        while self._queue:
            batch = [c for c in self._queue[: self._max_batch] if not c.answer.cancelled()]
            self._queue = self._queue[self._max_batch :]
            if not batch:
                continue
            try:
                replies = await asyncio.shield(self._send(batch))
            except Exception as exc:  # noqa: BLE001 - the connection failed: every call of the pipeline gets it
                replies = [exc] * len(batch)
            for call, reply in zip(batch, replies, strict=True):
                _answer(call, reply)

    async def _send(self, batch: Sequence[_Call]) -> list[Any]:
        replies = await self._pipeline(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # Redis lost its scripts: load them, then send those commands again
            for text in {batch[i].script.text for i in missing}:
                await self._redis.script_load(text)
            for i, reply in zip(missing, await self._pipeline([batch[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: Sequence[_Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark an unawaited call's error as seen (asyncio would log it as never retrieved)."""
    if not future.cancelled():
        future.exception()


def _answer(call: _Call, reply: Any) -> None:
    if call.answer.cancelled():
        if call.orphan is not None and not isinstance(reply, BaseException):
            call.orphan(reply)
        return
    if isinstance(reply, BaseException):
        call.answer.set_exception(reply)
    else:
        call.answer.set_result(reply)
