"""Spare holds: a lone call's settle takes the hold of its key's next call, in the same transaction. Storage layer
(the bookkeeping; the statements are ledger_sql's `_take_spare` and ledger_alone's `settle_with_spare`).

A call alone in its process paid two writes: the reserve before the upstream call and the settle after it. On
PostgreSQL each is a round trip; on SQLite each is a commit, with its WAL pages. A caller calling one request after
another (one client, an agent's loop) now pays one: its settle also takes a hold for its key's next call, and that
call reserves nothing itself.

- **Which calls.** A spare is taken by the settle of a paid call (a balance hold) made by a call alone in its process,
  for the same user, key and UTC day, of the call's own need and a quarter more (HEADROOM): a conversation's next
  call, with its longer prompt, still fits. Never for the demo key; for a call that may use a trial call, only when
  the user has none left.
- **Only with room to spare.** The statement takes it only while the account has room for ROOM (8) such holds: in
  its balance, in its day's cap and in the key's spend limit. Near any of them no spare is taken and every call
  reserves for itself, as before: with a spare held, a call of at most its amount still has room for 7 more.
  Otherwise it refuses nothing: a spare not taken is just not there.
- **Used.** The key's next call takes it if it is of the same day, at least as large as the call's own need, and was
  taken with at least the premium unlock that call needs (and, for a call that may use a trial call, with none
  left then), and if the call saw the same key spend limit and daily cap as the call whose settle took it. Its
  settle charges what the call cost and gives back the rest, as for any hold.
- **Limits changed meanwhile.** A call sees a key's spend limit and its user's daily cap through the key lookup,
  cached for AIPOWER_KEY_CACHE_SECONDS (as revocation and the allowed models are). A limit lowered while a spare
  is held therefore applies to a call as soon as its lookup sees it: such a call reserves for itself, and the
  guarded reserve refuses it. Until then (at most the cache's seconds) one call per key per process may still run
  on a spare taken under the old limit.
- **Given back.** One spare per key per process. A spare unused for IDLE_SECONDS (1 s) is released, uncharged, by
  the ledger's writer (within IDLE_SECONDS and a pass of the loop); so are all of them when the ledger closes. A
  release whose batch fails is queued again a second later. A spare too small for the key's next call goes back
  with that call's reserve: on SQLite in the same transaction; otherwise queued, so the writer releases it in the
  batch that reserves for the call (on PostgreSQL the reserve's one-statement group may run first; if it is refused,
  the general batch tries it again after the release). Its settle takes a new one.
- **Refusals.** A spare is really taken from the balance, the day's spend and the key's spend. So when a call is
  refused (402), this process's spares of the user go back, and the call is tried once more in the batch that
  releases them (one transaction, releases first). What is left: a call running on a spare holds up to a quarter
  more than it needs (HEADROOM) until it settles, so while such calls are in flight, a call that needs nearly all of
  what is left can be refused early by that much (the fourth review's find; trimming a hold in flight would need its
  caller's settle to learn the new amount). Another process's spare can likewise make such a call refused early, by
  at most one spare per key per process, each at most 1/8 of what was left when it was taken (as leases of the rate
  limits can).
- **An ordinary hold.** balance + open holds == sum(ledger) throughout. The owner's reports (accounts.balance) count
  a spare (holds.mode 'spare') as balance, not as held or spent today, also while a call runs on it: the balance
  shown after a call is what it was less that call's cost. A process that dies leaves it open, and repair releases
  it, as for a call in flight. A lone settle whose answer is lost (the connection dropped after it was sent) may
  have taken a spare this process does not know of: repair releases it, as for a lone reserve's hold.
- **Not taken** by a settle that charges more than its hold, by one of a call that ran past midnight UTC (a spare
  is always of today), or once the ledger is closing; close() waits for lone settles in flight and gives back
  every spare.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aipower.gateway.protocols import Hold, HoldRequest
from aipower.storage.ledger_sql import Spare

ROOM = 8  # a spare is taken only while the account has room for this many holds of its amount
HEADROOM = 4  # a spare holds its settled call's need and a quarter more
IDLE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class _Held:
    hold: Hold
    unlock: int  # the premium unlock the account had when the spare was taken
    no_trials: bool  # the user had no trial call left then (checked only for a call that may use one)
    budget: tuple[int | None, int | None]  # the key's spend limit and the user's daily cap its taker saw
    taken: float


class Spares:
    """One process's spare holds, one per key, and what each call in flight reserved (to take the next spare)."""

    def __init__(self, *, idle: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._idle = IDLE_SECONDS if idle is None else idle
        self._clock = clock
        self._by_key: dict[str, _Held] = {}
        self._requests: dict[str, HoldRequest] = {}  # hold id -> its request, for paid calls in flight

    def take(self, request: HoldRequest, day: str) -> Hold | None:
        """The key's spare, for this call, if it fits it (it is then the call's hold); None otherwise."""
        held = self._by_key.get(request.key_id)
        if held is None or request.demo or not _fits(held, request, day):
            return None
        del self._by_key[request.key_id]
        return held.hold

    def pop(self, key_id: str) -> Hold | None:
        """The key's spare, no longer offered (it does not cover the key's call: the caller gives it back)."""
        held = self._by_key.pop(key_id, None)
        return None if held is None else held.hold

    def reserved(self, request: HoldRequest, hold: Hold) -> None:
        """A call now holds `hold`: remember its request, so that its settle may take the key's next spare."""
        if hold.mode == "balance" and not request.demo:
            self._requests[hold.id] = request

    def settling(self, hold: Hold, new_id: str, day: str) -> Spare | None:
        """The spare to take with this hold's settle (a new hold `new_id` like it, for `day`, today), or None: the call
        was not a paid one, its key has a spare already, or its hold is of another day (a call that ran past
        midnight: a spare of its day would take the day's spend back to that day)."""
        request = self._requests.pop(hold.id, None)
        if request is None or request.key_id in self._by_key or hold.day != day:
            return None
        need = request.amount  # the call's own need: its hold may be a spare, larger already
        amount = need + need // HEADROOM  # a conversation's next call holds a little more
        spare = Hold(new_id, hold.user_id, hold.key_id, amount, "balance", day)
        return Spare(request, spare, ROOM * amount)

    def forget(self, hold: Hold) -> None:
        """The call's settle runs without a spare (not alone, or not by the lone path)."""
        self._requests.pop(hold.id, None)

    def put(self, spare: Spare) -> None:
        """`spare` was taken: the key's next call may use it."""
        request = spare.request
        unlock = request.unlock_nanos or 0
        held = _Held(spare.hold, unlock, request.trial_eligible, request.budget, self._clock())
        self._by_key[spare.hold.key_id] = held

    def expired(self) -> list[Hold]:
        """The spares unused for the idle time, no longer offered: the caller releases them."""
        cutoff = self._clock() - self._idle
        stale = [key for key, held in self._by_key.items() if held.taken <= cutoff]
        return [self._by_key.pop(key).hold for key in stale]

    def of_user(self, user_id: int) -> list[Hold]:
        """The user's spares, no longer offered: the caller gives them back (a call of the user was refused)."""
        keys = [key for key, held in self._by_key.items() if held.hold.user_id == user_id]
        return [self._by_key.pop(key).hold for key in keys]

    def due_in(self) -> float | None:
        """Seconds until the oldest spare has been idle long enough to go back; None if there is none."""
        if not self._by_key:
            return None
        oldest = min(held.taken for held in self._by_key.values())
        return max(0.0, oldest + self._idle - self._clock())

    def drain(self) -> list[Hold]:
        """Every spare, no longer offered (shutting down)."""
        holds = [held.hold for held in self._by_key.values()]
        self._by_key.clear()
        return holds

    def __len__(self) -> int:
        return len(self._by_key)


def _fits(held: _Held, request: HoldRequest, day: str) -> bool:
    hold = held.hold
    return (
        hold.user_id == request.user_id
        and hold.day == day
        and hold.amount >= request.amount
        and held.unlock >= (request.unlock_nanos or 0)
        and (held.no_trials or not request.trial_eligible)  # a trial call left is used before the balance
        and held.budget == request.budget  # a spend limit or daily cap changed since: the call reserves itself
    )
