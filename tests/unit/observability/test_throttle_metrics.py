"""Throttling in the scrape: two workers' ``extra["throttle"]`` summed (in flight, queued,
limits, refusals by reason, load shed) and the worst loop lag, as valid exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from isekai.observability.metrics import Gathered, render, sum_workers


def worker(in_flight: int, queued: int, rejected: dict, shed: int, lag: float) -> dict:
    return {
        "counters": {},
        "extra": {
            "throttle": {
                "policies": {
                    "inflight": {
                        "in_flight": in_flight,
                        "queued": queued,
                        "limit": 64,
                        "rejected": rejected,
                        "min_rtt": None,
                    }
                },
                "load_shed": shed,
                "loop_lag": lag,
                "episodes": 1,
            }
        },
    }


WORKERS = [
    worker(3, 1, {"queue_full": 2, "queue_timeout": 0, "shed": 1}, 5, 0.004),
    worker(4, 0, {"queue_full": 1, "queue_timeout": 6, "shed": 0}, 2, 0.250),
]


def test_throttle_metrics_sum_over_workers():
    totals = sum_workers(WORKERS)
    assert totals.throttle == {
        "inflight": {
            "in_flight": 7,
            "queued": 1,
            "limit": 128,
            "rejected": {"queue_full": 3, "queue_timeout": 6, "shed": 1},
        }
    }
    assert totals.load_shed == 7
    assert totals.loop_lag == 0.250


def test_throttle_metrics_exposition():
    text = render(Gathered(WORKERS, expected=2), 100).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    policy = (("policy", "inflight"),)
    assert samples[("isekai_concurrency_in_flight", policy)] == 7
    assert samples[("isekai_concurrency_queued", policy)] == 1
    assert samples[("isekai_concurrency_limit", policy)] == 128
    for reason, count in (("queue_full", 3), ("queue_timeout", 6), ("shed", 1)):
        labels = (("policy", "inflight"), ("reason", reason))
        assert samples[("isekai_concurrency_rejected_total", labels)] == count
    assert samples[("isekai_load_shed_total", ())] == 7
    assert samples[("isekai_event_loop_lag_seconds", ())] == 0.25


def test_throttle_metrics_without_throttle_stats():
    totals = sum_workers([{"counters": {}, "extra": {}}])
    assert totals.throttle == {} and totals.load_shed == 0 and totals.loop_lag is None
    text = render(Gathered([{"counters": {}, "extra": {}}]), 100).decode()
    assert "isekai_load_shed_total 0\n" in text
    assert "isekai_concurrency_in_flight{" not in text
