"""aipower/gateway/health.py: circuit breakers (closed -> open -> half-open -> closed) and latency averages.

Time is an injectable clock: nothing sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from aipower.catalog import Target, load
from aipower.errors import UpstreamError
from aipower.gateway.admission import Admission, LimitPolicy
from aipower.gateway.deployments import resolve
from aipower.gateway.health import Breaker, BreakerRules, MemoryHealthStore, admit, record, state
from aipower.gateway.limits import LocalLimiter
from aipower.gateway.protocols import Caller, CallOutcome
from aipower.gateway.routing import Router
from aipower.gateway.service import Gateway
from aipower.messages import ChatRequest, ChatResponse, Finish, Message, Text, TextDelta, Usage
from tests.gateway.test_service import FakeUpstream as ScriptedUpstream
from tests.gateway.test_service import MemoryLedger, MemoryLog, Script, answer

DEP = "deepseek/deepseek-chat@deepseek"
RULES = BreakerRules(failures=3, cooldown=30.0, alpha=0.5)


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def fail() -> CallOutcome:
    return CallOutcome(DEP, ok=False)


def ok(ttft: float | None = None, tokens_per_s: float | None = None) -> CallOutcome:
    return CallOutcome(DEP, ok=True, ttft=ttft, tokens_per_s=tokens_per_s)


async def states(store: MemoryHealthStore) -> str:
    return (await store.read([DEP]))[DEP].state


async def test_a_breaker_opens_after_n_consecutive_failures_skips_probes_once_and_closes() -> None:
    clock = Clock()
    store = MemoryHealthStore(RULES, clock)
    for _ in range(2):
        await store.record(fail())
    assert await states(store) == "closed" and await store.admit(DEP)
    await store.record(fail())  # the third in a row
    assert await states(store) == "open"
    assert not await store.admit(DEP)  # skipped during the cool-down
    health = (await store.read([DEP]))[DEP]
    assert health.retry_in == 30.0 and health.consecutive_failures == 3
    clock.now += 29.9
    assert not await store.admit(DEP)
    clock.now += 0.1
    assert await states(store) == "half-open"
    assert await store.admit(DEP)  # the one probe
    assert not await store.admit(DEP)  # a second caller is still kept away while the probe runs
    await store.record(ok())
    assert await states(store) == "closed"
    assert await store.admit(DEP) and await store.admit(DEP)


async def test_a_failed_probe_opens_the_breaker_for_another_cool_down() -> None:
    clock = Clock()
    store = MemoryHealthStore(RULES, clock)
    for _ in range(3):
        await store.record(fail())
    clock.now += 30
    assert await store.admit(DEP)
    await store.record(fail())
    assert await states(store) == "open"
    assert (await store.read([DEP]))[DEP].retry_in == 30.0
    clock.now += 30
    assert await states(store) == "half-open"


async def test_a_probe_that_never_reports_is_released_after_a_cool_down() -> None:
    clock = Clock()
    store = MemoryHealthStore(RULES, clock)
    for _ in range(3):
        await store.record(fail())
    clock.now += 30
    assert await store.admit(DEP)  # this caller goes away without an outcome
    clock.now += 29
    assert not await store.admit(DEP)
    clock.now += 1
    assert await store.admit(DEP)


async def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    store = MemoryHealthStore(RULES, Clock())
    for outcome in (fail(), fail(), ok(), fail(), fail()):
        await store.record(outcome)
    health = (await store.read([DEP]))[DEP]
    assert (health.state, health.consecutive_failures, health.calls, health.failures) == ("closed", 2, 5, 4)


async def test_error_rate_and_latency_are_moving_averages() -> None:
    store = MemoryHealthStore(RULES, Clock())
    await store.record(ok(ttft=0.2, tokens_per_s=100))
    health = (await store.read([DEP]))[DEP]
    assert (health.ttft_ms, health.tokens_per_s, health.error_rate) == (pytest.approx(200), 100, 0)
    await store.record(ok(ttft=0.4))  # alpha 0.5: halfway to the new sample; tokens/s unchanged
    await store.record(fail())
    health = (await store.read([DEP]))[DEP]
    assert health.ttft_ms == pytest.approx(300)
    assert health.tokens_per_s == 100
    assert health.error_rate == pytest.approx(0.5)


async def test_an_unknown_deployment_reads_as_closed_and_untouched() -> None:
    health = (await MemoryHealthStore().read(["x@y"]))["x@y"]
    assert (health.state, health.calls, health.ttft_ms, health.retry_in) == ("closed", 0, None, None)


def test_the_pure_functions_agree_with_the_store() -> None:
    breaker = Breaker()
    for now in (1.0, 2.0, 3.0):
        breaker = record(breaker, fail(), now, RULES)
    assert state(breaker, 3.0, RULES) == "open" and breaker.opened_at == 3.0
    assert admit(breaker, 32.9, RULES)[0] is False
    allowed, probing = admit(breaker, 33.0, RULES)
    assert allowed and probing.probe_at == 33.0
    assert state(record(probing, ok(), 34.0, RULES), 34.0, RULES) == "closed"


# ---------------------------------------------------------------- the breaker inside the gateway's failover loop


@dataclass
class SlowUpstream(ScriptedUpstream):
    """Each call takes `seconds` of the injected clock (no real waiting)."""

    clock: Clock = field(default_factory=Clock)
    seconds: float = 0.0

    async def complete(self, target: Target, request: ChatRequest) -> ChatResponse:
        self.clock.now += self.seconds
        return await super().complete(target, request)


def gateway_rig(
    scripts: dict[str, Script], budget: float = 30.0, seconds: float = 0.0
) -> tuple[Gateway, SlowUpstream, Router]:
    catalog = load()
    deployments = resolve(
        catalog, {"ZHIPU_API_KEY": "k1", "DOUBAO_API_KEY": "k2", "DEEPSEEK_API_KEY": "k3"}, {"openai"}
    )
    upstream = SlowUpstream(scripts, seconds=seconds)
    router = Router(deployments, MemoryHealthStore(RULES, upstream.clock), clock=upstream.clock, budget=budget)
    gateway = Gateway(
        deployments,
        upstream,
        MemoryLog(),
        MemoryLedger(),
        catalog.billing,
        admission=Admission(LocalLimiter(), LimitPolicy()),
        router=router,
    )
    return gateway, upstream, router


def chat(model: str, *fallbacks: str) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(role="user", parts=(Text("hi"),)),), fallback_models=fallbacks)


ZHIPU, DOUBAO, DEEPSEEK = "zhipu/glm-4-flash", "doubao/doubao-pro-256k", "deepseek/deepseek-chat"
CALLER = Caller(key_id="key_test", user_id=7)


async def test_an_open_breaker_is_skipped_by_the_gateway_then_probed_and_closed() -> None:
    down = Script(error=UpstreamError("down", status=503, type="x", code="upstream_unavailable", retryable=True))
    good = Script(response=answer("ok", Usage(3, 2)))
    gateway, upstream, router = gateway_rig({ZHIPU: down, DOUBAO: good})
    for n in range(3):
        done = await gateway.complete(CALLER, chat("auto-free"), f"r{n}")
        assert done.model.id == DOUBAO
    assert upstream.calls == [ZHIPU, DOUBAO] * 3
    upstream.calls.clear()
    done = await gateway.complete(CALLER, chat("auto-free"), "r3")  # zhipu's breaker is open: not even tried
    assert upstream.calls == [DOUBAO] and done.route == "auto-free: cheapest under $0.50/M -> " + DOUBAO
    upstream.clock.now += RULES.cooldown
    upstream.scripts[ZHIPU] = good
    upstream.calls.clear()
    done = await gateway.complete(CALLER, chat("auto-free"), "r4")  # half-open: one probe, which succeeds
    assert upstream.calls == [ZHIPU] and done.model.id == ZHIPU
    report = {target.deployment: health for target, health in await router.report()}
    assert report[f"{ZHIPU}@zhipu"].state == "closed"
    assert report[f"{DOUBAO}@doubao"].calls == 4


async def test_no_new_attempt_starts_once_the_failover_budget_is_spent() -> None:
    down = Script(error=UpstreamError("slow", status=503, type="x", code="upstream_unavailable", retryable=True))
    scripts = {ZHIPU: down, DOUBAO: down, DEEPSEEK: Script(response=answer("ok", Usage(3, 2)))}
    gateway, upstream, _ = gateway_rig(scripts, budget=10.0, seconds=6.0)
    with pytest.raises(UpstreamError):
        await gateway.complete(CALLER, chat(ZHIPU, DOUBAO, DEEPSEEK), "r1")
    assert upstream.calls == [ZHIPU, DOUBAO]  # 12s spent after two attempts: deepseek is never tried
    gateway, upstream, _ = gateway_rig(scripts, budget=13.0, seconds=6.0)
    assert (await gateway.complete(CALLER, chat(ZHIPU, DOUBAO, DEEPSEEK), "r2")).model.id == DEEPSEEK


async def test_a_non_retryable_error_does_not_count_against_the_deployment() -> None:
    bad = Script(error=UpstreamError("bad", status=400, type="x", code="upstream_invalid_request", retryable=False))
    gateway, upstream, router = gateway_rig({ZHIPU: bad})
    for n in range(4):
        with pytest.raises(UpstreamError):
            await gateway.complete(CALLER, chat(ZHIPU, DOUBAO), f"r{n}")
    assert upstream.calls == [ZHIPU] * 4  # never failed over, never tripped
    report = {target.deployment: health for target, health in await router.report()}
    assert (report[f"{ZHIPU}@zhipu"].state, report[f"{ZHIPU}@zhipu"].failures) == ("closed", 0)


async def test_streams_record_time_to_first_token() -> None:
    gateway, _, router = gateway_rig({DEEPSEEK: Script(events=(TextDelta(0, "hi"), Finish(0, "stop")))})
    session = await gateway.open_stream(CALLER, replace(chat(DEEPSEEK), stream=True), "s1")
    assert [e async for e in session.events]
    report = {target.deployment: health for target, health in await router.report()}
    assert report[f"{DEEPSEEK}@deepseek"].ttft_ms is not None and report[f"{DEEPSEEK}@deepseek"].calls == 1
