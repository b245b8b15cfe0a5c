"""The adaptive_concurrency gradient controller, fed latencies through `record` (what
``on_complete`` calls) on a fake clock."""

from __future__ import annotations

import asyncio

from isekai.config.loader import load_config_text
from isekai.policies import BUILDERS
from isekai.policies.adaptive_concurrency import MAX_SAMPLES, AdaptiveConcurrency, percentile


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(clock: Clock, **options) -> AdaptiveConcurrency:
    settings = dict(
        min_limit=2,
        max_limit=200,
        initial_limit=20,
        sample_interval=0.1,
        percentile=90,
        min_rtt_interval=30,
        min_rtt_requests=5,
        buffer=0.1,
        clock=clock,
    )
    settings.update(options)
    return AdaptiveConcurrency(**settings)


def feed(policy: AdaptiveConcurrency, clock: Clock, latency: float, intervals: int) -> None:
    """`intervals` sample intervals, each with 10 samples of `latency`."""
    for _ in range(intervals):
        for _ in range(10):
            clock.now += 0.01
            policy.record(latency, clock.now)


def test_adaptive_percentile_nearest_rank():
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 90) == 5.0
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
    assert percentile([7.0], 1) == 7.0


def test_adaptive_measures_min_rtt_pinned_then_restores_initial_limit():
    clock = Clock()
    policy = controller(clock)
    assert policy.limit == 2 and policy.measuring  # pinned to min_limit
    for _ in range(5):
        clock.now += 0.01
        policy.record(0.010, clock.now)
    assert not policy.measuring and policy.min_rtt == 0.010
    assert policy.limit == 20


def test_adaptive_limit_falls_when_latency_rises_and_recovers_when_it_falls():
    clock = Clock()
    policy = controller(clock)
    feed(policy, clock, 0.010, 1)  # the baseline: 10 ms
    start = policy.limit
    feed(policy, clock, 0.010, 3)  # at the baseline: the headroom grows it
    steady = policy.limit
    assert steady > start
    feed(policy, clock, 0.050, 6)  # five times slower: the gradient is at its 0.5 floor
    high_latency = policy.limit
    assert high_latency < steady
    assert high_latency <= max(2, steady // 2)
    feed(policy, clock, 0.010, 4)  # back to normal: the limit climbs again
    assert policy.limit > high_latency
    assert policy.sample_rtt == 0.010


def test_adaptive_limit_stays_within_bounds():
    clock = Clock()
    policy = controller(clock, max_limit=40)
    feed(policy, clock, 0.010, 1)
    feed(policy, clock, 0.001, 20)  # far faster than the baseline
    assert policy.limit == 40
    feed(policy, clock, 1.0, 20)
    assert policy.limit == 2


def test_adaptive_remeasures_min_rtt_after_interval():
    clock = Clock()
    policy = controller(clock, min_rtt_interval=1.0)
    for _ in range(5):  # the baseline
        clock.now += 0.01
        policy.record(0.010, clock.now)
    assert not policy.measuring
    measured_at = clock.now
    for _ in range(200):
        clock.now += 0.01
        policy.record(0.010, clock.now)
        if policy.measuring:
            break
    assert policy.measuring and policy.limit == 2  # pinned while it measures again
    assert clock.now - measured_at >= 1.0
    for _ in range(5):
        clock.now += 0.01
        policy.record(0.020, clock.now)
    assert not policy.measuring and policy.min_rtt == 0.020 and policy.limit > 2


def test_adaptive_rising_limit_admits_queued_requests():
    class Req:
        route_name = "api"
        cancelled = False

        def __init__(self) -> None:
            self.ctx: dict = {}

        def header(self, name):
            return None

    async def scenario():
        clock = Clock()
        policy = controller(clock, initial_limit=2, queue=5, queue_timeout=5)
        first, second = Req(), Req()
        assert policy.on_request(first) is None and policy.on_request(second) is None
        waiting = asyncio.ensure_future(policy.on_request(Req()))
        await asyncio.sleep(0)
        assert policy.queued == 1
        feed(policy, clock, 0.010, 3)  # the baseline, then a limit above 2
        await asyncio.sleep(0)
        assert policy.limit > 2 and waiting.done() and waiting.result() is None
        assert policy.in_flight == 3

    asyncio.run(scenario())


def test_adaptive_builder_reads_config():
    config = load_config_text(
        """
listeners: [{name: public, bind: "127.0.0.1:0"}]
policies:
  auto: {type: adaptive_concurrency, min_limit: 4, max_limit: 80, initial_limit: 10,
         sample_interval: 200ms, percentile: 95, min_rtt_interval: 1m, buffer: 0.2,
         queue: 16, queue_timeout: 500ms}
"""
    )
    policy = BUILDERS["adaptive_concurrency"](config.policies["auto"].options)
    assert (policy.min_limit, policy.max_limit, policy.exact_limit) == (4, 80, 10.0)
    assert (policy.sample_interval, policy.percentile, policy.min_rtt_interval) == (0.2, 95, 60)
    assert (policy.buffer, policy.queue_size, policy.queue_timeout) == (0.2, 16, 0.5)
    assert policy.stats()["limit"] == 4  # pinned until the baseline is measured


def test_adaptive_baseline_with_more_requests_than_kept_samples_ends():
    # min_rtt_requests may be up to 100 000 while one interval keeps MAX_SAMPLES (10 000)
    # latencies: the measurement must still end, not pin the limit to min_limit for good
    clock = Clock()
    requests = MAX_SAMPLES + 5
    policy = controller(clock, min_rtt_requests=requests)
    for i in range(requests):
        clock.now += 0.0001
        policy.record(0.010 if i % 2 else 0.020, clock.now)
    assert not policy.measuring
    assert policy.min_rtt is not None and 0.010 <= policy.min_rtt <= 0.020
    assert policy.limit == 20
