"""fault family: sampling, abort / delay, when_header, counters, sync vs async."""

from __future__ import annotations

import asyncio
import inspect
import json
from types import SimpleNamespace

from isekai.policies import BUILDERS
from isekai.policies.fault import FaultAbort, FaultDelay, sampled


class Req:
    def __init__(self, **headers):
        self.headers = {k.lower(): v for k, v in headers.items()}

    def header(self, name):
        return self.headers.get(name.lower())


def config(abort=None, delay=None, when_header=None):
    return SimpleNamespace(
        abort=SimpleNamespace(**abort) if abort else None,
        delay=SimpleNamespace(**delay) if delay else None,
        when_header=when_header,
    )


def test_fault_sampling_percent_0_and_100():
    draws = [0.0, 0.5, 0.999999]
    assert not any(sampled(0.0, lambda d=d: d) for d in draws)
    assert all(sampled(100.0, lambda d=d: d) for d in draws)
    assert sampled(50.0, lambda: 0.49) and not sampled(50.0, lambda: 0.5)


def test_fault_abort_only_is_sync_and_counts():
    policy = BUILDERS["fault"](config(abort={"status": 503, "percent": 100.0}))
    assert isinstance(policy, FaultAbort) and not isinstance(policy, FaultDelay)
    assert not inspect.iscoroutinefunction(policy.on_request)
    answer = policy.on_request(Req())
    assert answer.status == 503
    body = json.loads(answer.body)
    assert body == {
        "success": False,
        "error": "fault injected",
        "policy": "fault",
        "request_id": "",  # filled in per request when it is sent
    }
    assert policy.on_request(Req()) is answer  # prebuilt
    assert (policy.requests_seen, policy.aborted, policy.delayed) == (2, 2, 0)


def test_fault_abort_percent_zero_never_aborts():
    policy = BUILDERS["fault"](config(abort={"status": 503, "percent": 0.0}))
    assert all(policy.on_request(Req()) is None for _ in range(100))
    assert (policy.requests_seen, policy.aborted) == (100, 0)


def test_fault_abort_sampled_by_draw():
    draws = iter([0.1, 0.9, 0.2, 0.8])
    policy = FaultAbort(500, 50.0, draw=lambda: next(draws))
    results = [policy.on_request(Req()) for _ in range(4)]
    assert [r is not None for r in results] == [True, False, True, False]
    assert policy.aborted == 2


def test_fault_when_header_gates_the_fault():
    policy = BUILDERS["fault"](config(abort={"status": 418, "percent": 100.0}, when_header="X-F"))
    assert policy.on_request(Req()) is None
    assert policy.on_request(Req(**{"x-f": "1"})).status == 418
    assert (policy.requests_seen, policy.aborted) == (2, 1)


def test_fault_delay_is_async_and_sleeps():
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    policy = FaultDelay(0.25, 100.0, sleep=sleep)
    assert inspect.iscoroutinefunction(policy.on_request)
    assert asyncio.run(policy.on_request(Req())) is None
    assert slept == [0.25]
    assert (policy.requests_seen, policy.delayed, policy.aborted) == (1, 1, 0)


def test_fault_delay_then_abort():
    policy = BUILDERS["fault"](
        config(abort={"status": 503, "percent": 100.0}, delay={"duration": 0.01, "percent": 100.0})
    )
    assert isinstance(policy, FaultDelay)
    assert inspect.iscoroutinefunction(policy.on_request)
    answer = asyncio.run(policy.on_request(Req()))
    assert answer.status == 503
    assert (policy.requests_seen, policy.delayed, policy.aborted) == (1, 1, 1)


def test_fault_delay_percent_zero_and_when_header():
    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    policy = FaultDelay(1.0, 0.0, sleep=sleep)
    assert asyncio.run(policy.on_request(Req())) is None and slept == []
    gated = FaultDelay(1.0, 100.0, when_header="x-slow", sleep=sleep)
    asyncio.run(gated.on_request(Req()))
    asyncio.run(gated.on_request(Req(**{"X-Slow": "yes"})))
    assert slept == [1.0] and gated.delayed == 1 and gated.requests_seen == 2
