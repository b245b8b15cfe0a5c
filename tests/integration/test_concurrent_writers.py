"""Two gateways on one store writing at the same moment (PostgreSQL database, SQLite file).

Validate-then-store is serialised by the store's writer lock, so the second of two writers
sees the first's change; each gateway follows the other's changes by revision, so neither
serves only its own.
"""

from __future__ import annotations

import threading

import pytest

from tests.integration.test_control_plane import Admin, _postgres_url, gateway_yaml, get, start
from tests.support.gateway import wait_for

ROUNDS = 3  # races are probabilistic: a few rounds each


def _store_url(kind: str, tmp_path, require_service) -> str:
    if kind == "postgres":
        return _postgres_url(require_service)
    return f"sqlite:///{tmp_path / 'shared.db'}"


def _at_once(*calls):
    # run each call in its own thread, released together; their results in order
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, call):
        barrier.wait(timeout=10)
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def _post_at_once(admins, routes):
    # each admin API posts its route, released together; (status, body) of each
    return _at_once(
        *(
            lambda a=a, r=r: a.call("POST", "/api/routes", r)
            for a, r in zip(admins, routes, strict=True)
        )
    )


@pytest.fixture(params=["sqlite", "postgres"])
def two_gateways(request, tmp_path, upstream, require_service):
    url = _store_url(request.param, tmp_path, require_service)
    first = start(tmp_path, gateway_yaml(upstream.port, url), "a.yaml")
    second = None
    try:
        second = start(tmp_path, gateway_yaml(upstream.port, url), "b.yaml")
        yield first, second, url
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_concurrent_writers_same_match_one_wins_and_both_restart(two_gateways, tmp_path, upstream):
    first, second, url = two_gateways
    admins = Admin(first), Admin(second)
    for i in range(ROUNDS):
        routes = [
            {"name": f"r{i}-{side}", "match": {"path": f"/same{i}"}, "respond": {"body": side}}
            for side in ("a", "b")
        ]
        (status_a, body_a), (status_b, body_b) = _post_at_once(admins, routes)
        assert sorted([status_a, status_b]) == [201, 422], (body_a, body_b)
        loser = body_b if status_a == 201 else body_a
        assert "same host, path and methods" in loser["message"]
        winner = b"a" if status_a == 201 else b"b"
        for gw in (first, second):
            path = f"/same{i}"
            assert wait_for(lambda gw=gw, p=path, w=winner: get(gw.port, p) == (200, w), timeout=5)
    # the store holds no conflict: a later change applies, and a fresh gateway starts on it
    later = {"name": "later", "match": {"path": "/later"}, "respond": {"body": "later"}}
    assert admins[1].call("POST", "/api/routes", later)[0] == 201
    assert wait_for(lambda: get(first.port, "/later") == (200, b"later"), timeout=5)
    third = start(tmp_path, gateway_yaml(upstream.port, url), "c.yaml")
    try:
        for i in range(ROUNDS):
            assert get(third.port, f"/same{i}")[0] == 200
    finally:
        third.stop()


def test_concurrent_writers_each_gateway_serves_the_others_route(two_gateways):
    first, second, _ = two_gateways
    admins = Admin(first), Admin(second)
    for i in range(ROUNDS):
        routes = [
            {"name": f"p{i}-{side}", "match": {"path": f"/{side}{i}"}, "respond": {"body": side}}
            for side in ("a", "b")
        ]
        statuses = [status for status, _ in _post_at_once(admins, routes)]
        assert statuses == [201, 201]
        for gw in (first, second):
            for side in ("a", "b"):
                path = f"/{side}{i}"
                assert wait_for(lambda gw=gw, path=path: get(gw.port, path)[0] == 200, timeout=5), (
                    f"{path} not served by {gw.port}"
                )
