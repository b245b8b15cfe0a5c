"""Balancers by name: the one table that turns an upstream's ``balancer`` setting into an object.

A balancer is built per cluster from the cluster's `Target`s and answers, for every proxied
request, which selectable target it goes to (`isekai._core.balancer`: C classes, no Python call
per request).
"""

from __future__ import annotations

from isekai._core.balancer import Balancer, RoundRobin
from isekai._core.target import Target
from isekai.config import defaults

DEFAULT_BALANCER = defaults.BALANCER

BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
}


def make_balancer(name: str, targets: list[Target], **options: object) -> Balancer:
    """A ``name`` balancer over ``targets``; KeyError names the known ones."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        known = ", ".join(sorted(BALANCERS))
        raise KeyError(f"unknown balancer {name!r} (known: {known})") from None
    return cls(targets, **options)


def options_for(upstream: object) -> dict[str, object]:
    """The balancer options an upstream's settings give (consistent hashing's key)."""
    return {}
