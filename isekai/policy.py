"""Policies and the per-route chain they are compiled into.

A policy's ``on_request(request)`` returns ``None`` to let the request continue or a `Response`
to answer it from the gateway. `compile_chain` runs once per route per snapshot and splits a
route's policies into the synchronous ones, which `_core` runs inline on the fast path, and the
asynchronous ones, which need the slow path (one Task per request).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Response:
    """A response produced by the gateway itself (a policy's answer or a direct route)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@runtime_checkable
class Policy(Protocol):
    """Anything with ``on_request(request) -> Response | None`` (sync or ``async def``)."""

    def on_request(self, request: Any) -> Response | None: ...


@dataclass(frozen=True, slots=True)
class Chain:
    """A route's policies, in order, split by how they run."""

    sync: tuple[Policy, ...] = ()
    asynchronous: tuple[Policy, ...] = ()

    @property
    def fast_path(self) -> bool:
        """True when the route never needs a Task."""
        return not self.asynchronous


EMPTY_CHAIN = Chain()


def compile_chain(policies: Iterable[Policy]) -> Chain:
    """Order-preserving split of ``policies`` into sync and async parts.

    A sync policy after an async one would have to wait for it, so once an async policy appears
    every later policy goes to the async part too.
    """
    sync: list[Policy] = []
    later: list[Policy] = []
    for policy in policies:
        if later or inspect.iscoroutinefunction(policy.on_request):
            later.append(policy)
        else:
            sync.append(policy)
    if not sync and not later:
        return EMPTY_CHAIN
    if later:
        raise NotImplementedError("asynchronous policies need the slow path, not built yet")
    return Chain(tuple(sync), ())
