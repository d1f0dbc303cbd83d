"""Script calls made together share one pipeline: each caller still gets its own reply, in order; a Redis that
lost its scripts is re-taught them; a caller that goes away mid-admission does not keep its concurrency slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from aipower.gateway.limits import Check, Slot
from aipower.storage import redis_limits
from aipower.storage.redis_pipeline import ScriptPipeline
from tests.redis_service import require_redis

# Appends ARGV[1] to a list and returns the list's length: the order Redis ran the calls in, and each call's own reply.
_PUSH = "redis.call('RPUSH', KEYS[1], ARGV[1]); return {ARGV[1], redis.call('LLEN', KEYS[1])}"
# The same, after keeping Redis busy for some tens of milliseconds.
_SLOW_PUSH = "local i = 0 while i < 3000000 do i = i + 1 end " + _PUSH
# A RESP3 server's answer to HELLO 3, as much of it as redis-py reads.
_HELLO = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n"


@pytest.fixture
async def client() -> AsyncIterator[redis.asyncio.Redis]:
    made = redis_limits.connect(require_redis())
    try:
        yield made
    finally:
        await made.aclose()


def record_connections(client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections taken from the client's pool from now on (a pipeline takes its one at its first call)."""
    taken: list[Any] = []
    take = client.connection_pool.get_connection

    async def get_connection() -> Any:
        taken.append(await take())
        return taken[-1]

    monkeypatch.setattr(client.connection_pool, "get_connection", get_connection)
    return taken


async def test_concurrent_calls_each_get_their_own_reply_in_order(prefix: str, client: redis.asyncio.Redis) -> None:
    pipeline = ScriptPipeline(client)
    push = pipeline.script(_PUSH)
    replies = await asyncio.gather(*(pipeline.call(push, [f"{prefix}order"], [f"c{i}"]) for i in range(100)))
    assert [r[0].decode() for r in replies] == [f"c{i}" for i in range(100)]
    assert sorted(int(r[1]) for r in replies) == list(range(1, 101))
    ran = [v.decode() for v in await client.lrange(f"{prefix}order", 0, -1)]
    # Queued calls run in the order they were queued; the first went alone at once and may be overtaken by them.
    assert sorted(ran) == sorted(f"c{i}" for i in range(100))
    assert [v for v in ran if v != "c0"] == [f"c{i}" for i in range(1, 100)]


async def test_calls_made_together_share_round_trips(
    prefix: str, client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 concurrent calls go out as a few exchanges on one connection, not as 100 separate ones."""
    pipeline = ScriptPipeline(client)
    push = pipeline.script(_PUSH)
    taken = record_connections(client, monkeypatch)
    await pipeline.call(push, [f"{prefix}warm"], ["x"])  # the script is loaded now
    (connection,) = taken
    exchanges: list[int] = []  # the EVALSHAs each exchange carried
    send = connection.send_packed_command

    async def counted(packed: list[bytes], check_health: bool = True) -> None:
        exchanges.append(b"".join(packed).count(b"EVALSHA"))
        await send(packed, check_health=check_health)

    monkeypatch.setattr(connection, "send_packed_command", counted)
    await asyncio.gather(*(pipeline.call(push, [f"{prefix}n"], [i]) for i in range(100)))
    assert len(taken) == 1  # every exchange on the pipeline's one connection
    assert exchanges[0] == 1  # the first call found nothing in flight and went alone
    assert sum(exchanges) == 100 and 2 <= len(exchanges) <= 5, exchanges
    assert await client.llen(f"{prefix}n") == 100
    await pipeline.close()
    # Back in the pool with the client's own socket timeout (the pipeline's exchanges had their own timer).
    assert connection.socket_timeout == client.connection_pool.connection_kwargs["socket_timeout"] == 0.5


async def test_a_caller_gone_mid_exchange_leaves_no_reply_for_the_next_call(
    prefix: str, client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone call cancelled after its command was sent must not leave its reply on the connection, where the next
    call would read it as its own."""
    pipeline = ScriptPipeline(client)
    slow = pipeline.script(_SLOW_PUSH)
    push = pipeline.script(_PUSH)
    taken = record_connections(client, monkeypatch)
    await pipeline.call(push, [f"{prefix}warm"], ["x"])
    await pipeline.call(slow, [f"{prefix}warm"], ["x"])  # both scripts loaded, the connection taken
    monkeypatch.undo()
    (connection,) = taken
    sent = asyncio.Event()
    send = connection.send_packed_command

    async def signalling(packed: list[bytes], check_health: bool = True) -> None:
        await send(packed, check_health=check_health)
        sent.set()

    monkeypatch.setattr(connection, "send_packed_command", signalling)
    leaving = asyncio.create_task(pipeline.call(slow, [f"{prefix}slow"], ["gone"]))
    await sent.wait()  # sent; Redis is busy with it for a while
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    reply = await pipeline.call(push, [f"{prefix}next"], ["mine"])
    assert reply[0] == b"mine" and int(reply[1]) == 1
    assert [v.decode() for v in await client.lrange(f"{prefix}slow", 0, -1)] == ["gone"]  # it did run, once
    await pipeline.close()


async def test_a_redis_that_lost_its_scripts_is_taught_them_again(prefix: str, client: redis.asyncio.Redis) -> None:
    pipeline = ScriptPipeline(client)
    push = pipeline.script(_PUSH)
    await pipeline.call(push, [f"{prefix}s"], ["first"])
    await client.script_flush()  # what a Redis restart does
    assert (await pipeline.call(push, [f"{prefix}s"], ["alone"]))[1] == 2
    await client.script_flush()
    together = await asyncio.gather(*(pipeline.call(push, [f"{prefix}s"], [i]) for i in range(10)))
    assert sorted(int(r[1]) for r in together) == list(range(3, 13))


async def test_a_caller_gone_mid_admission_gives_its_slot_back(prefix: str, client: redis.asyncio.Redis) -> None:
    limiter = redis_limits.RedisLimiter(client, prefix)
    slot = Slot("conc:key_gone", 1)
    lone = asyncio.create_task(limiter.hit("rpm:k:other", 100, 60))  # in flight alone: the next call queues
    await asyncio.sleep(0)
    leaving = asyncio.create_task(limiter.admit([Check("rpm:k:key_gone", 100, 60)], slot))
    await asyncio.sleep(0)  # queued; the pipeline's writer is created
    await asyncio.sleep(0)  # the writer has sent it
    leaving.cancel()
    await lone
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await limiter.close()  # the admission's reply arrived: its slot is handed back ...
    await limiter.close()  # ... by one more call, sent now
    assert await client.zcard(f"{prefix}slots:conc:key_gone") == 0  # the calls holding the key's slots
    assert (await limiter.admit([], slot)).admitted


async def test_a_redis_that_stops_answering_fails_the_call_instead_of_hanging() -> None:
    """The client's socket timeout bounds each exchange on the kept connection: a server that took the connection (it
    answers redis-py's connection set-up) and then never answers a command makes the call fail with redis-py's
    TimeoutError (an outage, for the limiter), and so does the next call, on a new connection."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while data := await reader.read(65536):  # the set-up's HELLO and CLIENT SETINFO get answers; EVALSHA never
            writer.write(_HELLO * data.count(b"HELLO") + b"+OK\r\n" * data.count(b"CLIENT"))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = redis_limits.connect(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0")
    pipeline = ScriptPipeline(client)
    script = pipeline.script(_PUSH)
    try:
        for connections in (1, 2):
            with pytest.raises(redis.exceptions.TimeoutError):
                await asyncio.wait_for(pipeline.call(script, ["k"], ["v"]), 10)
            assert len(writers) == connections  # connected, then dropped: the next call connects again
    finally:
        await client.aclose()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_when_reteaching_a_script_fails_the_calls_that_ran_keep_their_replies(
    prefix: str, client: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call whose script ran in the first exchange (an admission that counted) is not reported as failed because the
    second exchange, for another script Redis had lost, failed."""
    pipeline = ScriptPipeline(client)
    slow, known = pipeline.script(_SLOW_PUSH), pipeline.script(_PUSH)
    lost = pipeline.script(_PUSH + " -- another script")
    for script in (slow, known):
        await pipeline.call(script, [f"{prefix}warm"], ["warm"])  # cached on Redis; `lost` never was
    real = pipeline._exchange
    exchanges = 0

    async def reteaching_fails(commands: Any) -> list[Any]:
        nonlocal exchanges
        exchanges += 1
        if exchanges == 3:  # 1: the slow call, alone; 2: `known` and `lost` together; 3: `lost` again, with its script
            raise ConnectionError("Redis went away")
        return await real(commands)

    monkeypatch.setattr(pipeline, "_exchange", reteaching_fails)
    first = asyncio.ensure_future(pipeline.call(slow, [f"{prefix}s"], ["first"]))
    await asyncio.sleep(0)  # it goes alone; the next two queue behind it and go together
    ran, failed = await asyncio.gather(
        pipeline.call(known, [f"{prefix}k"], ["ran"]),
        pipeline.call(lost, [f"{prefix}l"], ["lost"]),
        return_exceptions=True,
    )
    await first
    assert exchanges == 3
    assert not isinstance(ran, BaseException) and ran[0] == b"ran"
    assert isinstance(failed, ConnectionError)
    assert await client.lrange(f"{prefix}k", 0, -1) == [b"ran"]  # its script did run
