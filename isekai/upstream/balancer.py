"""Balancers by name: the one table that turns an upstream's ``balancer`` setting into an object.

A balancer is built per cluster from the cluster's `Target`s and answers, for every proxied
request, which selectable target it goes to (`isekai._core.balancer`: C classes, no Python call
per request). Only ``consistent_hash`` takes options: what to hash (``hash_on``) and how
(``hash_algorithm``).
"""

from __future__ import annotations

from isekai._core.balancer import (
    ALGORITHMS,
    HASH_SOURCES,
    Balancer,
    ConsistentHash,
    Ewma,
    LeastConn,
    PowerOfTwo,
    Random,
    RoundRobin,
)
from isekai._core.target import Target
from isekai.config import defaults
from isekai.config.schema import Upstream

DEFAULT_BALANCER = defaults.BALANCER
DEFAULT_HASH_ON = defaults.HASH_ON
DEFAULT_HASH_ALGORITHM = defaults.HASH_ALGORITHM

BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "least_conn": LeastConn,
    "p2c": PowerOfTwo,
    "consistent_hash": ConsistentHash,
    "ewma": Ewma,
    "random": Random,
}


def make_balancer(name: str, targets: list[Target], **options: object) -> Balancer:
    """A ``name`` balancer over ``targets``; KeyError names the known ones."""
    try:
        cls = BALANCERS[name]
    except KeyError:
        known = ", ".join(sorted(BALANCERS))
        raise KeyError(f"unknown balancer {name!r} (known: {known})") from None
    return cls(targets, **options)


def parse_hash_on(hash_on: object) -> tuple[int, bytes]:
    """``client_ip`` | ``path`` | ``header:NAME`` | ``cookie:NAME`` (None: ``client_ip``) ->
    (HashSource, name bytes: a header name lower-case, a cookie name as written (cookie names
    are case-sensitive); b"" for client_ip and path). ValueError otherwise."""
    text = DEFAULT_HASH_ON if hash_on is None else hash_on
    if not isinstance(text, str):
        raise ValueError(f"hash_on must be a string, not {text!r}")
    kind, sep, name = text.strip().partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if kind in ("client_ip", "path"):
        if sep:
            raise ValueError(f"hash_on {text!r}: {kind} takes no name")
        return HASH_SOURCES[kind], b""
    if kind in ("header", "cookie"):
        if not name:
            raise ValueError(f"hash_on {text!r}: {kind}:NAME needs a name")
        try:
            raw = (name.lower() if kind == "header" else name).encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"hash_on {text!r}: the name is not ASCII") from None
        return HASH_SOURCES[kind], raw
    raise ValueError(f"hash_on {text!r}: expected client_ip, path, header:NAME or cookie:NAME")


def options_for(upstream: Upstream) -> dict[str, object]:
    """The balancer options an upstream's settings give: {} except for ``consistent_hash``,
    whose ``hash_on`` and ``hash_algorithm`` become hash_source, hash_name and algorithm."""
    if upstream.balancer != "consistent_hash":
        return {}
    source, name = parse_hash_on(upstream.hash_on)
    algorithm = upstream.hash_algorithm or DEFAULT_HASH_ALGORITHM
    if algorithm not in ALGORITHMS:
        raise ValueError(f"hash_algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
    return {"hash_source": source, "hash_name": name, "algorithm": algorithm}
