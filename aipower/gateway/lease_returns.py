"""What a process gives back of its leases of shared limits, sent together once a sweep. Domain layer.

See gateway.limit_leases. Unused leases, usage owed and slot holds to release queue here and go to the source in one
call per slot key (the counts ride along with the first). A failed send is not lost where sending it twice is safe:
holds (a release is idempotent) are sent again until their deadline, usage owed (counted twice at worst, never lost)
until its window ends. Unused counts are not sent again: if the first send did arrive, a second would free what
other calls use.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from aipower.gateway.limits import Check, window_end

logger = logging.getLogger(__name__)

HOLD_SECONDS = 900.0  # a slot hold's deadline on the source: a release still failing past it is dropped
GiveBack = Callable[[str | None, Sequence[str], Sequence[tuple[Check, float]]], Awaitable[None]]


class Returns:
    """The queue of what goes back, and the sends on their way."""

    def __init__(self, give_back: GiveBack) -> None:
        self._give_back = give_back
        self._unused: list[tuple[Check, float]] = []
        self._owed: list[tuple[Check, float]] = []
        self._holds: dict[str, list[tuple[str, float]]] = {}  # slot key -> (token, when taken)
        self._sending: set[asyncio.Future[None]] = set()

    def unused(self, check: Check, at: float) -> None:
        if check.cost > 0:
            self._unused.append((check, at))

    def owe(self, check: Check, at: float) -> None:
        if check.cost > 0:
            self._owed.append((Check(check.key, 0, check.window_seconds, -check.cost), at))

    def release(self, slot_key: str, token: str, taken: float) -> None:
        self._holds.setdefault(slot_key, []).append((token, taken))

    def send(self, now: float) -> bool:
        """Send everything queued; True while some of it is still on its way or waiting to be sent again."""
        owed = [(c, at) for c, at in self._owed if window_end(at, c.window_seconds) > now]
        counts, self._unused, self._owed = self._unused + owed, [], []
        holds, self._holds = self._holds, {}
        for slot_key, tokens in holds.items():
            kept = [(t, taken) for t, taken in tokens if now - taken < HOLD_SECONDS]
            if kept:
                self._go(slot_key, kept, counts)
                counts = []
        if counts:
            self._go(None, [], counts)
        return bool(self._sending or self._owed or self._holds)

    async def settle(self) -> None:
        """Wait for what is on its way."""
        await asyncio.gather(*self._sending, return_exceptions=True)

    def _go(self, slot_key: str | None, holds: list[tuple[str, float]], counts: list[tuple[Check, float]]) -> None:
        tokens = [t for t, _ in holds]
        sending = asyncio.ensure_future(self._give_back(slot_key, tokens, counts))
        self._sending.add(sending)
        sending.add_done_callback(partial(self._sent, slot_key, holds, counts))

    def _sent(
        self,
        slot_key: str | None,
        holds: list[tuple[str, float]],
        counts: list[tuple[Check, float]],
        sending: asyncio.Future[None],
    ) -> None:
        self._sending.discard(sending)
        if sending.cancelled() or sending.exception() is None:
            return
        logger.warning("limits: could not give leases back (%s); trying again", type(sending.exception()).__name__)
        if slot_key is not None:
            self._holds.setdefault(slot_key, []).extend(holds)
        self._owed.extend((c, at) for c, at in counts if c.cost < 0)
