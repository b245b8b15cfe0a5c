"""Policies: the public contract every policy family follows.

A policy is any object with some of these phases (DESIGN.md §6):

- ``on_request(request) -> Response | None``: ``None`` lets the request continue, a `Response`
  answers it from the gateway. Sync policies run inline on the request path; an ``async def``
  one runs on the slow path (one Task per request, within the policy's ``deadline``: 503 past
  it; cancelled when the client leaves).
- ``on_response(request, head)``: sync; edits ``head.status`` and its fields
  (``head.header/set_header/add_header/remove_header``) before the head is written. Response
  policies run in reverse order, for the policies whose request phase the request passed.
- ``on_complete(request)``: after the last byte (or when the client left); for statistics and
  logs, never fails the request.
- ``close()``: when no snapshot uses the instance any more.

``request`` gives ``method``, ``path``, ``query``, ``host`` (bytes), ``params`` (path
parameters), ``request_id``, ``route_name``, ``client_ip`` (after ``trusted_proxies``),
``ctx`` (a dict for later policies, made on first use) and ``header(name)``,
``set_header(name, value)``, ``add_header``, ``remove_header`` for the fields sent upstream;
for ``on_complete``: ``status``, ``elapsed`` (seconds since its first byte),
``request_bytes`` and ``response_bytes`` (body bytes), ``listener_name``.

A *family* (`PolicyFamily`) is a ``type`` name, a frozen config dataclass whose fields are
declared with ``isekai.config.meta.setting`` (the loader, the JSON Schema and the admin API
read it), and a callable making a policy from a config instance. Third-party families are
published in the ``isekai.policies`` entry-point group; `register` adds one in-process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from isekai.config.policies import register_family

__all__ = ["Policy", "PolicyFamily", "Response", "register"]


@dataclass(frozen=True, slots=True)
class Response:
    """A response produced by the gateway itself (a policy's answer or a direct route)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @classmethod
    def json(cls, status: int, data: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """A JSON answer: ``data`` serialised, ``content-type: application/json``."""
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, (("content-type", "application/json"), *headers), body)


@runtime_checkable
class Policy(Protocol):
    """Anything with ``on_request(request) -> Response | None`` (sync or ``async def``); the
    ``on_response``, ``on_complete`` and ``close`` phases are optional."""

    def on_request(self, request: Any) -> Response | None: ...


@dataclass(frozen=True, slots=True)
class PolicyFamily:
    """A kind of policy: ``type`` (the YAML ``type:``), ``config`` (a frozen dataclass of
    ``setting`` fields) and ``policy`` (config instance -> policy object)."""

    type: str
    config: type
    policy: Callable[[Any], Any]


def register(family: PolicyFamily) -> None:
    """Make ``family`` known in this process (entry points do this for installed packages)."""
    register_family(family)
