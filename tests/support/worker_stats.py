"""One worker's statistics rows of the upstream side, written by hand for tests of what sums
them (status endpoints, metrics): the shapes of `Cluster.target_stats` and `Cluster.stats`."""

from __future__ import annotations


def target_row(upstream: str, target: str, **changes) -> dict:
    """One worker's row of a target: a quiet, closed target, with ``changes``."""
    row = {
        "upstream": upstream,
        "target": target,
        "weight": 1,
        "healthy": True,
        "selectable": True,
        "in_flight": 0,
        "ewma_ms": 0.0,
        "ejected": False,
        "ejected_for": 0.0,
        "ejections": 0,
        "consecutive_failures": 0,
        "breaker": "closed",
        "next_probe_in": 0.0,
        "breaker_opened": 0,
        "window_requests": 0,
        "window_failures": 0,
        "requests": 0,
        "failures": 0,
    }
    row.update(changes)
    return row


def cluster_row(upstream: str, **changes) -> dict:
    """One worker's row of an upstream: round robin, idle, with ``changes``."""
    row = {
        "upstream": upstream,
        "balancer": "round_robin",
        "in_flight": 0,
        "panic": False,
        "retries": 0,
        "retries_active": 0,
        "retries_refused": 0,
        "refused": {"no_target": 0, "max_requests": 0, "max_pending": 0},
    }
    row.update(changes)
    return row
