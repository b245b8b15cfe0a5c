"""Cluster: outlier ejection, circuit breaker, panic, limits and retry rules, on a fake clock
(every `now` is passed in; nothing here sleeps)."""

from __future__ import annotations

import pytest

from isekai._core.balancer import RoundRobin
from isekai._core.cluster import Cluster
from isekai._core.target import Target


def make(n: int = 1, **settings: object) -> tuple[Cluster, list[Target]]:
    targets = [Target("app", f"127.0.0.1:{9000 + i}") for i in range(n)]
    cluster = Cluster("app", RoundRobin(targets))
    for key, value in settings.items():
        setattr(cluster, key, value)
    cluster.recompute()
    return cluster, targets


def attempt(cluster: Cluster, outcome: str, status: int, now: float) -> Target:
    target = cluster.pick_target()
    assert target is not None
    cluster.report_outcome(target, outcome, status, 0.01, now)
    cluster.release_target(target)
    return target


BREAKER = dict(failure_ratio=0.5, window=10.0, min_requests=10, open_for=30.0, half_open_requests=3)


def test_cluster_breaker_opens_on_failure_ratio_with_min_requests():
    cluster, (target,) = make(**BREAKER)
    for i in range(9):  # 9 requests, 5 failures: below min_requests
        attempt(cluster, "ok", 500 if i < 5 else 200, now=100.0 + i * 0.1)
    assert target.breaker == 0 and target.selectable
    attempt(cluster, "ok", 503, now=101.0)  # 10 requests, 6 failures
    assert target.breaker == 1 and not target.selectable
    assert target.opened_total == 1
    assert cluster.pick_target() is None and cluster.refusal_name == "no_target"
    assert cluster.refusals()["no_target"] == 1


def test_cluster_breaker_timeline_open_half_open_closed():
    cluster, (target,) = make(**BREAKER)
    for i in range(10):
        attempt(cluster, "connect_failure", 0, now=50.0 + i * 0.01)
    assert target.breaker == 1
    opened = target.opened_at
    cluster.update(opened + 29.9)
    assert target.breaker == 1 and cluster.pick_target() is None
    row = cluster.target_stats(opened + 29.9)[0]
    assert row["breaker"] == "open" and row["next_probe_in"] == pytest.approx(0.1, abs=1e-6)
    cluster.update(opened + 30.0)
    assert target.breaker == 2 and target.selectable
    probes = [cluster.pick_target() for _ in range(3)]
    assert probes == [target] * 3
    assert cluster.pick_target() is None  # at most half_open_requests probes at once
    for probe in probes[:2]:
        cluster.report_outcome(probe, "ok", 200, 0.01, opened + 30.5)
        cluster.release_target(probe)
    assert target.breaker == 2
    cluster.report_outcome(probes[2], "ok", 204, 0.01, opened + 30.6)
    cluster.release_target(probes[2])
    assert target.breaker == 0 and target.selectable
    assert target.in_flight == 0 and cluster.in_flight == 0


def test_cluster_breaker_half_open_probe_failure_reopens():
    cluster, (target,) = make(**BREAKER)
    for _ in range(10):
        attempt(cluster, "timeout", 0, now=10.0)
    cluster.update(40.0)
    assert target.breaker == 2
    probe = cluster.pick_target()
    cluster.report_outcome(probe, "reset", 0, 0.01, 40.1)
    cluster.release_target(probe)
    assert target.breaker == 1 and target.opened_total == 2
    assert target.probe_at == pytest.approx(70.1)


def test_cluster_breaker_cancelled_probe_frees_its_slot():
    cluster, (target,) = make(**BREAKER)
    for _ in range(10):
        attempt(cluster, "timeout", 0, now=10.0)
    cluster.update(40.0)
    probes = [cluster.pick_target() for _ in range(3)]
    assert cluster.pick_target() is None
    cluster.report_outcome(probes[0], "cancelled", 0, 0.0, 40.2)  # the client left
    cluster.release_target(probes[0])
    assert cluster.pick_target() is target


def test_cluster_breaker_counts_only_configured_statuses():
    cluster, (target,) = make(**BREAKER)
    cluster.set_failure_statuses([503])
    for _ in range(20):
        attempt(cluster, "ok", 500, now=5.0)
    assert target.breaker == 0  # 500 is not a breaker failure here
    for _ in range(20):
        attempt(cluster, "ok", 503, now=5.5)
    assert target.breaker == 1


def test_cluster_breaker_window_forgets_old_failures():
    cluster, (target,) = make(**BREAKER)
    for _ in range(9):
        attempt(cluster, "connect_failure", 0, now=0.5)
    assert target.window(0.5, 10.0) == (9, 9)
    assert target.window(10.6, 10.0) == (0, 0)  # the bucket left the window
    attempt(cluster, "connect_failure", 0, now=11.0)
    assert target.breaker == 0  # 1 request in the window: below min_requests


def test_cluster_outlier_ejects_after_consecutive_failures_for_growing_interval():
    cluster, (a, b) = make(2, outlier_failures=3, base_ejection=10.0, max_ejection=25.0)
    for _ in range(2):
        cluster.report_outcome(a, "ok", 502, 0.01, 1.0)
    cluster.report_outcome(a, "ok", 200, 0.01, 1.0)  # a success resets the count
    for _ in range(2):
        cluster.report_outcome(a, "ok", 502, 0.01, 1.0)
    assert a.ejected_until == 0.0
    cluster.report_outcome(a, "connect_failure", 0, 0.01, 2.0)
    assert a.ejected_until == 12.0 and not a.selectable
    assert {cluster.pick_target() for _ in range(4)} == {b}
    cluster.update(12.0)
    assert a.ejected_until == 0.0 and a.selectable
    for _ in range(3):
        cluster.report_outcome(a, "timeout", 0, 0.01, 13.0)
    assert a.ejected_until == 33.0  # second ejection in a row: 2 x base
    cluster.update(33.0)
    for _ in range(3):
        cluster.report_outcome(a, "ok", 500, 0.01, 34.0)
    assert a.ejected_until == 34.0 + 25.0  # 3 x base, capped at max_ejection
    assert a.ejections_total == 3
    # the multiplier decays by one per quiet base_ejection
    cluster.update(59.0)
    cluster.update(69.5)
    cluster.update(80.0)
    assert a.ejections == 1


def test_cluster_outlier_max_ejection_share_keeps_targets():
    cluster, targets = make(4, outlier_failures=1, max_ejection_share=0.5)
    for target in targets:
        cluster.report_outcome(target, "connect_failure", 0, 0.01, 1.0)
    assert sum(t.ejected_until != 0.0 for t in targets) == 2


def test_cluster_outlier_always_allows_one_ejection():
    cluster, targets = make(3, outlier_failures=1, max_ejection_share=0.1)
    for target in targets:
        cluster.report_outcome(target, "connect_failure", 0, 0.01, 1.0)
    assert sum(t.ejected_until != 0.0 for t in targets) == 1


def test_cluster_health_verdicts_and_panic_threshold():
    cluster, (a, b, c) = make(3)
    assert cluster.set_health("127.0.0.1:9000", False)
    assert cluster.set_health("127.0.0.1:9001", False)
    assert not cluster.set_health("127.0.0.1:1", False)
    assert {cluster.pick_target() for _ in range(6)} == {c}
    cluster.panic_threshold = 0.5  # 1 of 3 healthy is below half: spread over all
    cluster.recompute()
    assert cluster.panic
    assert {cluster.pick_target() for _ in range(6)} == {a, b, c}
    cluster.set_health("127.0.0.1:9002", False)
    assert cluster.pick_target() is not None  # panic: even with none healthy


def test_cluster_no_healthy_target_without_panic_refuses():
    cluster, targets = make(2)
    for target in targets:
        cluster.set_health(target.address, False)
    assert cluster.pick_target() is None and cluster.refusal_name == "no_target"


def test_cluster_open_breaker_is_never_used_even_in_panic():
    cluster, (a, b) = make(2, panic_threshold=1.0, **BREAKER)
    cluster.set_health(a.address, False)
    assert cluster.panic
    for _ in range(10):
        cluster.report_outcome(b, "connect_failure", 0, 0.01, 1.0)
    assert b.breaker == 1
    assert {cluster.pick_target() for _ in range(4)} == {a}


def test_cluster_max_requests_refuses_past_the_limit():
    cluster, _ = make(2, max_requests=2)
    first, second = cluster.pick_target(), cluster.pick_target()
    assert first is not None and second is not None
    assert cluster.pick_target() is None and cluster.refusal_name == "max_requests"
    cluster.report_outcome(first, "ok", 200, 0.01, 1.0)
    cluster.release_target(first)
    assert cluster.pick_target() is not None
    assert cluster.refusals()["max_requests"] == 1


def test_cluster_retry_budget_is_a_share_of_requests_in_flight_with_a_floor():
    cluster, _ = make(1, budget=0.2, min_concurrency=2)
    held = [cluster.pick_target() for _ in range(20)]
    assert all(held)
    granted = [cluster.start_retry() for _ in range(6)]
    assert granted == [True, True, True, True, False, False]  # 0.2 x 20 = 4
    assert cluster.retries_refused == 2
    cluster.end_retry()
    assert cluster.start_retry()
    idle, _ = make(1, budget=0.2, min_concurrency=2)
    assert [idle.start_retry() for _ in range(3)] == [True, True, False]  # the floor


def test_cluster_max_retries_caps_concurrent_retries():
    cluster, _ = make(1, budget=1.0, min_concurrency=10, max_retries=1)
    assert cluster.start_retry() and not cluster.start_retry()


def test_cluster_retry_on_conditions():
    cluster, _ = make(1)
    cluster.set_retry_on(["connect_failure", 502, 503, 504])
    assert cluster.wants_retry("connect_failure")
    assert not cluster.wants_retry("reset")
    assert cluster.wants_retry("timeout")  # 504 covers a per-try timeout
    assert cluster.wants_retry("ok", 503) and not cluster.wants_retry("ok", 500)
    assert not cluster.wants_retry("ok", 200)
    cluster.set_retry_on(["reset"])
    assert cluster.wants_retry("reset") and cluster.wants_retry("protocol")
    assert not cluster.wants_retry("timeout") and not cluster.wants_retry("connect_failure")
    with pytest.raises(ValueError):
        cluster.set_retry_on([404])


def test_cluster_retry_backoff_grows_jittered_and_capped():
    cluster, _ = make(1, backoff=0.025, max_backoff=0.1)
    for attempt_number, bound in ((1, 0.025), (2, 0.05), (3, 0.1), (6, 0.1)):
        delays = [cluster.retry_backoff(attempt_number) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > bound * 0.8  # full jitter reaches near the bound
        assert min(delays) < bound * 0.2


def test_cluster_ewma_follows_time_to_head_and_penalises_failures():
    cluster, (target,) = make(1, ewma_decay=10.0)
    cluster.report_outcome(target, "ok", 200, 0.100, 1.0)
    assert target.ewma == pytest.approx(0.100)
    cluster.report_outcome(target, "ok", 200, 0.020, 1.0)  # no time passed: no weight yet
    assert target.ewma == pytest.approx(0.100)
    cluster.report_outcome(target, "ok", 200, 0.020, 11.0)  # one decay time later
    assert target.ewma == pytest.approx(0.060)  # the old average weighs 10 / (10 + 10)
    cluster.report_outcome(target, "timeout", 0, 2.0, 11.5)
    assert target.ewma == pytest.approx(2.0)


def test_cluster_in_flight_counts_picks_until_release():
    cluster, (a, b) = make(2)
    picked = [cluster.pick_target() for _ in range(4)]
    assert a.in_flight == 2 and b.in_flight == 2 and cluster.in_flight == 4
    for target in picked:
        cluster.report_outcome(target, "ok", 200, 0.01, 1.0)
        cluster.release_target(target)
    assert a.in_flight == b.in_flight == cluster.in_flight == 0
    assert a.requests == 2 and a.failures == 0


def test_cluster_passing_health_check_lifts_an_ejection():
    cluster, (a, b) = make(2, outlier_failures=1, base_ejection=30.0)
    cluster.set_health(a.address, False)
    cluster.report_outcome(a, "timeout", 0, 0.5, 1.0)
    assert a.ejected_until == 31.0 and not a.selectable
    cluster.set_health(a.address, True)
    assert a.ejected_until == 0.0 and a.selectable


def test_cluster_requests_picked_before_half_open_are_not_probes():
    cluster, (target,) = make(**BREAKER)
    old = [cluster.pick_target() for _ in range(3)]  # picked while closed
    assert cluster.picked_epoch == 0
    for _ in range(10):
        attempt(cluster, "connect_failure", 0, now=1.0)
    cluster.update(31.0)
    assert target.breaker == 2
    probes = [cluster.pick_target() for _ in range(3)]
    epoch = cluster.picked_epoch
    assert epoch == target.epoch == 1
    for request in old:  # their answers arrive now: no verdict for the half-open breaker
        cluster.report_outcome(request, "ok", 200, 0.01, 31.1, probe=0)
        cluster.release_target(request)
    assert target.breaker == 2 and target.probe_successes == 0
    assert cluster.pick_target() is None  # the three probe slots are still taken
    cluster.report_outcome(probes[0], "ok", 503, 0.01, 31.2, probe=epoch)
    assert target.breaker == 1  # a real probe failed: open again


def test_cluster_probe_of_an_earlier_half_open_period_does_not_count():
    cluster, (target,) = make(**BREAKER)
    for _ in range(10):
        attempt(cluster, "connect_failure", 0, now=1.0)
    cluster.update(31.0)
    stale = cluster.pick_target()
    stale_epoch = cluster.picked_epoch
    cluster.report_outcome(cluster.pick_target(), "reset", 0, 0.01, 31.1, probe=stale_epoch)
    cluster.update(61.2)  # open again, then half-open: a new period
    assert target.breaker == 2 and target.epoch == stale_epoch + 1
    cluster.report_outcome(stale, "ok", 200, 0.01, 61.3, probe=stale_epoch)
    assert target.probe_successes == 0


def test_cluster_breaker_and_ejection_reset_when_the_upstream_drops_them():
    cluster, (target,) = make(outlier_failures=1, base_ejection=30.0, **BREAKER)
    for _ in range(10):
        cluster.report_outcome(target, "timeout", 0, 0.01, 1.0)
    assert target.breaker == 1 and target.ejected_until != 0.0
    cluster.reset_breakers()
    assert target.breaker == 0 and target.ejected_until != 0.0 and not target.selectable
    cluster.reset_ejections()
    assert target.ejected_until == 0.0 and target.selectable


def test_cluster_state_change_in_an_older_cluster_recomputes_the_newest():
    targets = [Target("app", "127.0.0.1:9000"), Target("app", "127.0.0.1:9001")]
    old = Cluster("app", RoundRobin(targets))
    new = Cluster("app", RoundRobin(targets))
    new.panic_threshold = 1.0  # the newest settings: panic below 100 % healthy
    for target in targets:
        target.owner = new
    old.outlier_failures = 1
    old.report_outcome(targets[0], "connect_failure", 0, 0.01, 1.0)  # an old request's answer
    assert targets[0].ejected_until != 0.0
    assert new.panic and targets[0].selectable  # decided by the newest cluster's settings
