"""What a process gives back of its leases of shared limits, sent together once a sweep. Domain layer.

See gateway.limit_leases. Unused leases, usage owed and slot holds to release queue here and go to the source in one
call per slot key (the counts ride along with the first). A send that fails is sent again, as it was and under the
same id, until what it carries expires (a hold at its deadline, a count with its window): the source applies a
send's counts at most once per id, so a send whose answer was lost, though it did arrive, frees nothing twice and
counts nothing twice; and releasing a hold twice is releasing it once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from aipower.gateway.limits import Check, window_end

logger = logging.getLogger(__name__)

HOLD_SECONDS = 900.0  # no hold outlives this on the source: a release still failing past it is dropped
GiveBack = Callable[[str | None, Sequence[str], Sequence[tuple[Check, float]], str], Awaitable[None]]
Keep = Callable[[str, Sequence[str], int, float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Send:
    id: str
    slot_key: str | None
    holds: list[tuple[str, float]]  # (token, when taken)
    counts: list[tuple[Check, float]]  # (amount to give back, or owed if < 0; a time inside its window)

    def live(self, now: float) -> _Send | None:
        """What is still worth sending at `now` (None: nothing)."""
        holds = [(t, taken) for t, taken in self.holds if now - taken < HOLD_SECONDS]
        counts = [(c, at) for c, at in self.counts if window_end(at, c.window_seconds) > now]
        return _Send(self.id, self.slot_key, holds, counts) if holds or counts else None


class Returns:
    """The queue of what goes back, the sends on their way, and those to send again."""

    def __init__(self, give_back: GiveBack, keep: Keep) -> None:
        self._give_back = give_back
        self._keep = keep
        self._counts: list[tuple[Check, float]] = []
        self._holds: dict[str, list[tuple[str, float]]] = {}  # slot key -> (token, when taken)
        self._again: list[_Send] = []
        self._sending: set[asyncio.Future[None]] = set()
        self._ids = itertools.count()
        self._id_prefix = secrets.token_hex(6)
        self._failing: set[str] = set()  # what is failing now (give-backs, keeps): logged once each

    def unused(self, check: Check, at: float) -> None:
        if check.cost > 0:
            self._counts.append((check, at))

    def owe(self, check: Check, at: float) -> None:
        if check.cost > 0:
            self._counts.append((Check(check.key, 0, check.window_seconds, -check.cost), at))

    def release(self, slot_key: str, token: str, taken: float) -> None:
        self._holds.setdefault(slot_key, []).append((token, taken))

    def keep(self, slot_key: str, tokens: Sequence[str], ttl: int, now: float) -> None:
        """Move the holds' deadlines on, now (not sent again if it fails: the next keep is a few seconds away)."""
        keeping = asyncio.ensure_future(self._keep(slot_key, tokens, ttl, now))
        self._sending.add(keeping)
        keeping.add_done_callback(self._kept)

    def send(self, now: float) -> bool:
        """Send what is queued and what failed before; True while some of it is on its way or to be sent again."""
        sends = [live for s in self._again if (live := s.live(now)) is not None]
        self._again = []
        counts, self._counts = self._counts, []
        holds, self._holds = self._holds, {}
        for slot_key, tokens in holds.items():
            sends.append(_Send(self._new_id(), slot_key, tokens, counts))
            counts = []
        if counts:
            sends.append(_Send(self._new_id(), None, [], counts))
        for s in sends:
            self._go(s)
        return bool(self._sending or self._again)

    async def flush(self, now: float) -> None:
        """Send everything and wait for it; what fails is sent once more."""
        for _ in range(2):
            self.send(now)
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    def _go(self, s: _Send) -> None:
        tokens = [t for t, _ in s.holds]
        sending = asyncio.ensure_future(self._give_back(s.slot_key, tokens, s.counts, s.id if s.counts else ""))
        self._sending.add(sending)
        sending.add_done_callback(partial(self._sent, s))

    def _kept(self, keeping: asyncio.Future[None]) -> None:
        self._sending.discard(keeping)
        self._note(keeping, "keeping slot holds")

    def _sent(self, s: _Send, sending: asyncio.Future[None]) -> None:
        self._sending.discard(sending)
        if self._note(sending, "giving leases back (sent again until it arrives)"):
            self._again.append(s)

    def _note(self, done: asyncio.Future[None], what: str) -> bool:
        """Whether `done` failed; logged once until a send of its kind succeeds again (not once a second during an
        outage)."""
        if done.cancelled():
            return False
        error = done.exception()
        if error is None:
            if what in self._failing:
                self._failing.discard(what)
                logger.warning("limits: %s: works again", what)
            return False
        if what not in self._failing:
            self._failing.add(what)
            logger.warning("limits: %s (%s)", what, type(error).__name__)
        return True
