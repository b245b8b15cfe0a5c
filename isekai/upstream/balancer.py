"""Balancers by name: the one table that turns an upstream's ``balancer`` setting into an object.

A balancer is built per cluster and snapshot from the cluster's pools and answers
``pick(exchange) -> Pool | None`` for every proxied request (``None``: no target can take it,
answered 503). Balancers live in `isekai._core.upstream` as ``cdef class`` subclasses of
`Balancer` so the pick costs no Python call; one written in Python (a subclass overriding
``pick``) works too, at the price of a Python call per request.
"""

from __future__ import annotations

from isekai._core.upstream import Balancer, Pool, RoundRobin
from isekai.config import defaults

DEFAULT_BALANCER = defaults.BALANCER

BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
}


def make_balancer(name: str, pools: list[Pool]) -> Balancer:
    """A ``name`` balancer over ``pools``; KeyError names the known ones."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        known = ", ".join(sorted(BALANCERS))
        raise KeyError(f"unknown balancer {name!r} (known: {known})") from None
    return cls(pools)
