"""The concurrency_limit policy on a real event loop: slots, the priority queue, shedding,
timeouts, cancellation and releasing exactly once."""

from __future__ import annotations

import asyncio
import json

import pytest

from isekai._core.policy import Answer
from isekai.config.concurrency_policy import Priority
from isekai.config.loader import load_config_text
from isekai.policies import BUILDERS
from isekai.policies.concurrency import ConcurrencyLimit, PriorityOf, throttle_stats


class Req:
    """What the policy reads of a request: headers, ctx, the route, `cancelled`."""

    def __init__(
        self,
        name: str = "",
        headers: dict | None = None,
        route: str = "api",
        upstream: str | None = "app",
    ) -> None:
        self.name = name
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.route_name = route
        self.upstream_name = upstream
        self.ctx: dict = {}
        self.cancelled = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def run(coro):
    return asyncio.run(coro)


async def start(policy: ConcurrencyLimit, req: Req):
    """on_request as the slow path does it: an awaitable becomes a Task."""
    result = policy.on_request(req)
    if result is None or isinstance(result, Answer):
        return result
    task = asyncio.ensure_future(result)
    await asyncio.sleep(0)
    return task


def reason(answer: Answer) -> str:
    return json.loads(answer.body)["error"]


def test_concurrency_free_slots_admit_inline_then_queue():
    async def scenario():
        policy = ConcurrencyLimit(2, queue=2, queue_timeout=5)
        a, b, c = Req("a"), Req("b"), Req("c")
        assert await start(policy, a) is None
        assert await start(policy, b) is None
        task = await start(policy, c)
        assert isinstance(task, asyncio.Task) and not task.done()
        assert (policy.in_flight, policy.queued) == (2, 1)
        policy.on_complete(a)
        await asyncio.sleep(0)
        assert task.done() and task.result() is None
        assert (policy.in_flight, policy.queued) == (2, 0)
        policy.on_complete(b)
        policy.on_complete(c)
        assert policy.in_flight == 0

    run(scenario())


def test_concurrency_queue_order_priority_then_fifo():
    async def scenario():
        policy = ConcurrencyLimit(
            1, queue=10, queue_timeout=5, priority=Priority(header="X-Priority")
        )
        holder = Req("holder")
        assert await start(policy, holder) is None
        order: list[str] = []
        tasks = []
        for name, prio in [("low1", "0"), ("high1", "50"), ("low2", "0"), ("high2", "50")]:
            req = Req(name, {"X-Priority": prio})
            task = await start(policy, req)
            task.add_done_callback(lambda _, req=req: order.append(req.name))
            tasks.append((req, task))
        current = holder
        for _ in range(4):
            policy.on_complete(current)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            current = next(req for req, _ in tasks if req.name == order[-1])
        assert order == ["high1", "high2", "low1", "low2"]

    run(scenario())


def test_concurrency_full_queue_refuses_newcomer_not_above_lowest():
    async def scenario():
        policy = ConcurrencyLimit(1, queue=2, queue_timeout=5, priority=Priority(header="P"))
        await start(policy, Req("holder"))
        queued = [await start(policy, Req(n, {"P": "10"})) for n in ("q1", "q2")]
        answer = await start(policy, Req("same", {"P": "10"}))
        assert isinstance(answer, Answer) and answer.status == 503
        assert dict(answer.headers)[b"retry-after"] == b"1"
        assert policy.rejected["queue_full"] == 1
        assert not any(task.done() for task in queued)

    run(scenario())


def test_concurrency_full_queue_sheds_lowest_for_higher_newcomer():
    async def scenario():
        policy = ConcurrencyLimit(1, queue=2, queue_timeout=5, priority=Priority(header="P"))
        holder = Req("holder")
        await start(policy, holder)
        low_old = await start(policy, Req("low_old", {"P": "5"}))
        low_new = await start(policy, Req("low_new", {"P": "5"}))
        high = await start(policy, Req("high", {"P": "90"}))
        await asyncio.sleep(0)
        # the one served last (the newer of the lowest) is shed
        assert low_new.done() and low_new.result().status == 503
        assert "higher priority" in reason(low_new.result())
        assert not low_old.done() and not high.done()
        assert policy.rejected["shed"] == 1 and policy.queued == 2
        policy.on_complete(holder)
        await asyncio.sleep(0)
        assert high.done() and high.result() is None

    run(scenario())


def test_concurrency_queue_timeout_answers_503():
    async def scenario():
        policy = ConcurrencyLimit(1, queue=1, queue_timeout=0.05, retry_after=2.5)
        holder = Req("holder")
        await start(policy, holder)
        waiting = Req("waiting")
        task = await start(policy, waiting)
        answer = await asyncio.wait_for(task, 5)
        assert answer.status == 503 and dict(answer.headers)[b"retry-after"] == b"3"
        assert policy.rejected["queue_timeout"] == 1 and policy.queued == 0
        policy.on_complete(waiting)  # answered 503 by the policy: it held no slot
        assert policy.in_flight == 1
        policy.on_complete(holder)
        assert policy.in_flight == 0

    run(scenario())


def test_concurrency_release_exactly_once():
    async def scenario():
        policy = ConcurrencyLimit(1, queue=0)
        req = Req("one")
        assert await start(policy, req) is None
        policy.on_complete(req)
        policy.on_complete(req)  # a second call frees nothing more
        assert policy.in_flight == 0
        other = Req("other")
        assert await start(policy, other) is None
        refused = await start(policy, Req("third"))
        assert refused.status == 503 and policy.in_flight == 1

    run(scenario())


def test_concurrency_cancel_while_queued_leaves_queue():
    async def scenario():
        policy = ConcurrencyLimit(1, queue=2, queue_timeout=5)
        holder = Req("holder")
        await start(policy, holder)
        gone = Req("gone")
        task = await start(policy, gone)
        task.cancel()  # the client left: the slow path cancels the Task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert policy.queued == 0
        policy.on_complete(holder)
        assert policy.in_flight == 0  # nothing was handed to the cancelled request

    run(scenario())


def test_concurrency_cancel_after_slot_handed_over_gives_it_back():
    async def scenario():
        policy = ConcurrencyLimit(1, queue=2, queue_timeout=5)
        holder = Req("holder")
        await start(policy, holder)
        late = Req("late")
        task = await start(policy, late)
        policy.on_complete(holder)  # the slot goes to `late`...
        assert policy.in_flight == 1
        task.cancel()  # ...whose client leaves before its Task resumes
        with pytest.raises(asyncio.CancelledError):
            await task
        assert policy.in_flight == 0

    run(scenario())


def test_concurrency_cancelled_request_never_ran_is_skipped():
    async def scenario():
        policy = ConcurrencyLimit(1, queue=2, queue_timeout=5)
        holder = Req("holder")
        await start(policy, holder)
        dead = Req("dead")
        awaitable = policy.on_request(dead)  # its Task never runs
        dead.cancelled = True
        alive = Req("alive")
        task = await start(policy, alive)
        policy.on_complete(holder)
        await asyncio.sleep(0)
        assert task.done() and task.result() is None
        assert policy.in_flight == 1 and alive.ctx
        awaitable.close()

    run(scenario())


def test_concurrency_per_route_counts_apart():
    async def scenario():
        per_route = ConcurrencyLimit(1, per="route")
        assert await start(per_route, Req(route="a")) is None
        assert await start(per_route, Req(route="b")) is None
        shared = ConcurrencyLimit(1, per="policy")
        assert await start(shared, Req(route="a")) is None
        assert (await start(shared, Req(route="b"))).status == 503

    run(scenario())


def test_concurrency_per_upstream_shares_a_counter_across_routes():
    async def scenario():
        policy = ConcurrencyLimit(1, per="upstream")
        first = Req(route="a", upstream="app")
        assert await start(policy, first) is None
        assert (await start(policy, Req(route="b", upstream="app"))).status == 503
        assert await start(policy, Req(route="c", upstream="other")) is None
        assert await start(policy, Req(route="direct", upstream=None)) is None
        assert policy.in_flight == 3
        policy.on_complete(first)
        assert await start(policy, Req(route="b", upstream="app")) is None

    run(scenario())


def test_concurrency_priority_header_then_tier_then_default():
    of = PriorityOf(Priority(header="X-Priority", tiers={"enterprise": 10}, default=3))
    assert of(Req(headers={"X-Priority": "77"})) == 77
    for bad in ("500", "-1", "²", "1.5", "0x10"):
        assert of(Req(headers={"X-Priority": bad})) == 3
    tiered = Req(headers={"X-Priority": "high"})
    tiered.ctx["consumer_tier"] = "enterprise"
    assert of(tiered) == 10
    other = Req()
    other.ctx["consumer_tier"] = "free"
    assert of(other) == 3
    assert PriorityOf(None)(Req(headers={"X-Priority": "9"})) == 0


def test_concurrency_priority_header_only_0_to_100():
    of = PriorityOf(Priority(header="X-Priority", default=3))
    for raw, expected in ((" 7 ", 7), ("\t100", 100), ("007", 7), ("0", 0)):
        assert of(Req(headers={"X-Priority": raw})) == expected
    for bad in ("101", "0100", "9" * 5000, "+5", "", " ", "5, 90", "1e2", "٣"):
        assert of(Req(headers={"X-Priority": bad})) == 3


def test_concurrency_builder_and_stats():
    config = load_config_text(
        """
listeners: [{name: public, bind: "127.0.0.1:0"}]
policies:
  inflight: {type: concurrency_limit, max: 64, queue: 128, queue_timeout: 2s, per: policy,
             retry_after: 3s, priority: {header: X-Priority, tiers: {enterprise: 10}}}
"""
    )
    policy = BUILDERS["concurrency_limit"](config.policies["inflight"].options)
    assert (policy.limit, policy.queue_size, policy.queue_timeout) == (64, 128, 2.0)
    assert dict(policy.answers["queue_full"].headers)[b"retry-after"] == b"3"

    class Core:
        target = policy

    rows = throttle_stats({"inflight": Core(), "other": object()})
    assert rows == {
        "inflight": {
            "in_flight": 0,
            "queued": 0,
            "limit": 64,
            "rejected": {"queue_full": 0, "queue_timeout": 0, "shed": 0},
        }
    }


def test_concurrency_same_instance_twice_in_chain_takes_one_slot():
    async def scenario():
        policy = ConcurrencyLimit(2)
        req = Req("twice")
        assert await start(policy, req) is None
        assert await start(policy, req) is None  # the route lists it after the listener
        assert policy.in_flight == 1
        policy.on_complete(req)
        policy.on_complete(req)
        assert policy.in_flight == 0

    run(scenario())
