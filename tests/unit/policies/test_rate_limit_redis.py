"""RedisLimiter against real Redis: the shared one for semantics, throwaway ones for failures,
Sentinel and Cluster (tests/support/redis_servers.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isekai.policies.environment import PolicyEnvironment
from isekai.policies.rate_limit_redis import (
    ALGORITHMS,
    BACKOFF_FIRST,
    EXPIRY_MARGIN_MS,
    RedisLimiter,
)
from tests.support.rate_reference import Reference
from tests.support.redis_servers import RedisCluster, RedisSentinel, RedisServer, command

TOKEN_BUCKET, GCRA, SLIDING_WINDOW, FIXED_WINDOW = range(4)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(env: PolicyEnvironment, url: str, **kwargs) -> RedisLimiter:
    options = {"prefix": f"test:{uuid.uuid4().hex}:", "timeout": 2.0, "name": "t", "url": url}
    options.update(kwargs)
    return RedisLimiter(functools.partial(env.redis, url), **options)


async def closing(env: PolicyEnvironment, work):
    try:
        return await work
    finally:
        await env.aclose()


@pytest.fixture(scope="module")
def shared_url(require_service):
    return require_service("redis")


@pytest.fixture(scope="module")
def server():
    with RedisServer() as redis_server:
        yield redis_server


# -- the four algorithms against the reference model --------------------------------------

steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 7.5, 20.0, -0.3]),
        st.integers(min_value=0, max_value=4),  # cost; 0 = a peek
        st.integers(min_value=0, max_value=1),  # which of two keys
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("algorithm", range(4), ids=ALGORITHMS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(min_value=1, max_value=12),
    period=st.sampled_from([0.5, 1.0, 3.0, 10.0, 60.0]),
    extra_burst=st.integers(min_value=0, max_value=6),
    start=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    ops=steps,
)
def test_redis_limiter_decides_as_the_reference(
    shared_url, algorithm, count, period, extra_burst, start, ops
):
    burst = float(count + extra_burst)
    reference = Reference()
    name = ALGORITHMS[algorithm]

    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, shared_url)
        now = start
        try:
            for dt, cost, which in ops:
                now += dt
                key = b"k%d" % which
                if cost == 0:
                    got = await limit.peek(key, algorithm, count, period, burst, now=now)
                    want = reference.peek(key, name, count, period, burst, now)
                else:
                    got = await limit.take(key, algorithm, count, period, burst, cost, now=now)
                    want = reference.take(key, name, count, period, burst, cost, now)
                assert got == want, (now, cost, which)
        finally:
            await env.aclose()
        assert limit.errors == 0

    asyncio.run(run())


@pytest.mark.parametrize("algorithm", range(4), ids=ALGORITHMS)
def test_redis_limiter_follows_the_reference_when_the_clock_steps_back(shared_url, algorithm):
    # (now, cost): 0 = peek; the clock goes back at 99.2, 98.0 and 100.9
    ops = [(100.0, 3), (99.2, 1), (100.4, 1), (98.0, 2), (100.6, 1), (101.5, 2), (100.9, 0),
           (101.7, 3), (102.2, 1), (103.9, 0)]  # fmt: skip
    name = ALGORITHMS[algorithm]
    reference = Reference()

    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, shared_url)
        got = []
        for now, cost in ops:
            if cost:
                got.append(await limit.take(b"k", algorithm, 4, 1.0, 4, cost, now=now))
            else:
                got.append(await limit.peek(b"k", algorithm, 4, 1.0, 4, now=now))
        await env.aclose()
        return got

    want = [
        reference.take(b"k", name, 4, 1.0, 4, cost, now)
        if cost
        else reference.peek(b"k", name, 4, 1.0, 4, now)
        for now, cost in ops
    ]
    assert asyncio.run(run()) == want


def test_redis_limiter_peek_of_an_unknown_key_reads_fresh_and_stores_nothing(shared_url):
    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, shared_url)
        got = await limit.peek(b"never", TOKEN_BUCKET, 10, 1.0, 20, now=50.0)
        exists = await closing(env, env.redis(shared_url).exists(limit.key_name(b"never")))
        return got, exists

    got, exists = asyncio.run(run())
    assert got == (True, 20.0, 20.0, 0.0, 0.0)
    assert exists == 0


# -- atomicity: concurrent takes from two clients -----------------------------------------


@pytest.mark.parametrize("algorithm", range(4), ids=ALGORITHMS)
def test_redis_limiter_admits_exactly_the_limit_under_concurrency(shared_url, algorithm):
    async def run():
        first, second = PolicyEnvironment(), PolicyEnvironment()
        prefix = f"test:{uuid.uuid4().hex}:"
        a = limiter(first, shared_url, prefix=prefix)
        b = limiter(second, shared_url, prefix=prefix)
        assert first.redis(shared_url) is not second.redis(shared_url)
        # count 37 per 60 s, burst 37: the same 37 for every algorithm at one instant
        takes = [
            (a if i % 2 else b).take(b"hot", algorithm, 37, 60.0, 37, 1, now=6000.0)
            for i in range(200)
        ]
        try:
            return await asyncio.gather(*takes)
        finally:
            await first.aclose()
            await second.aclose()

    decisions = asyncio.run(run())
    assert None not in decisions
    assert sum(d[0] for d in decisions) == 37
    assert sorted(d[2] for d in decisions if d[0]) == [float(n) for n in range(37)]


# -- memory stays bounded: every key expires -----------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "idle"),
    [
        (TOKEN_BUCKET, 2.0),  # 4 of 8 tokens taken, 2 tokens/s: full again in 2 s
        (GCRA, 2.0),  # TAT 2 s ahead
        (FIXED_WINDOW, 4.0 - 0.5),  # the window [0, 4) ends in 3.5 s (now 4000.5)
        (SLIDING_WINDOW, 4.0 - 0.5 + 4.0),  # and the next one matters too
    ],
    ids=["token_bucket", "gcra", "fixed_window", "sliding_window"],
)
def test_redis_limiter_sets_each_key_to_expire_when_idle(shared_url, algorithm, idle):
    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, shared_url)
        await limit.take(b"k", algorithm, 8, 4.0, 8, 4, now=4000.5)
        return await closing(env, env.redis(shared_url).pttl(limit.key_name(b"k")))

    ttl = asyncio.run(run())
    expected = idle * 1000 + EXPIRY_MARGIN_MS
    assert expected - 50 <= ttl <= expected  # a few ms may pass before PTTL


def test_redis_limiter_keys_really_disappear(server):
    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, server.url)
        # 1000/s, burst 1: full again after 1 ms, so the key lives about EXPIRY_MARGIN_MS
        await limit.take(b"short", TOKEN_BUCKET, 1000, 1.0, 1, 1)
        client = env.redis(server.url)
        seen = await client.exists(limit.key_name(b"short"))
        for _ in range(60):  # bounded: at most 3 s
            if not await client.exists(limit.key_name(b"short")):
                break
            await asyncio.sleep(0.05)
        gone = not await client.exists(limit.key_name(b"short"))
        await env.aclose()
        return seen, gone

    assert asyncio.run(run()) == (1, True)


def test_redis_limiter_uses_the_server_clock_without_now(shared_url):
    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, shared_url)
        decisions = [await limit.take(b"k", FIXED_WINDOW, 3, 3600.0, 3, 1) for _ in range(4)]
        await env.aclose()
        return decisions

    decisions = asyncio.run(run())
    assert [d[0] for d in decisions] == [True, True, True, False]
    assert [d[2] for d in decisions] == [2.0, 1.0, 0.0, 0.0]
    assert 0 < decisions[3][4] == decisions[3][3] <= 3600.0


def test_redis_limiter_loads_the_script_when_the_server_forgot_it(server):
    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, server.url)
        first = await limit.take(b"k", GCRA, 1, 1.0, 2, 1, now=10.0)
        await env.redis(server.url).script_flush()
        second = await limit.take(b"k", GCRA, 1, 1.0, 2, 1, now=10.0)
        await env.aclose()
        return first, second, limit.errors

    first, second, errors = asyncio.run(run())
    assert first[:3] == (True, 2.0, 1.0)
    assert second[:3] == (True, 2.0, 0.0)
    assert errors == 0


# -- failure: a Redis that dies, answers nothing, comes back ------------------------------


class Listener:
    """A TCP listener on a port that counts connections; ``answer=False`` keeps them open
    and silent (a hung Redis), otherwise closes each at once (a broken one)."""

    def __init__(self, port: int, silent: bool = False) -> None:
        self.accepted = 0
        self.silent = silent
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.silent:
                self._held.append(conn)
            else:
                conn.close()

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        for conn in self._held:
            conn.close()


def test_redis_limiter_backs_off_and_recovers_when_redis_dies(server, caplog):
    clock = FakeClock()
    caplog.set_level(logging.WARNING, logger="isekai.policies")

    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, server.url, timeout=2.0, clock=clock, name="per_ip")
        take = functools.partial(limit.take, b"k", TOKEN_BUCKET, 10, 1.0, 10, 1)
        assert (await take())[0] is True
        assert limit.state()["up"] is True

        server.stop()  # a crash: the pooled connection dies, nothing listens
        assert await take() is None
        assert limit.errors == 1
        assert limit.state()["up"] is False
        assert limit.state()["backoff"] == pytest.approx(BACKOFF_FIRST)

        with Listener(server.port) as listener:  # counts every connection attempt
            for _ in range(50):  # inside the back-off: nothing reaches the port
                assert await take() is None
            assert listener.accepted == 0
            assert limit.errors == 1

            clock.now += BACKOFF_FIRST  # the back-off ended: one probe goes out, and fails
            assert await take() is None
            assert listener.accepted >= 1
            assert limit.errors == 2
            assert limit.state()["backoff"] == pytest.approx(2 * BACKOFF_FIRST)  # doubled

            seen = listener.accepted
            clock.now += BACKOFF_FIRST  # half of the doubled back-off: still nothing
            assert await take() is None
            assert listener.accepted == seen
            assert limit.errors == 2

        server.start()  # the same port again
        clock.now += 2 * BACKOFF_FIRST
        decision = await take()
        assert decision is not None and decision[0] is True
        state = limit.state()
        assert (state["up"], state["errors"], state["backoff"]) == (True, 2, 0.0)
        assert state["last_error"] is not None
        again = await take()  # and the next decisions too, through the same client
        await env.aclose()
        return again

    again = asyncio.run(run())
    assert again is not None and again[0] is True
    lines = [r.getMessage() for r in caplog.records if r.name == "isekai.policies"]
    failed = [line for line in lines if "failed" in line]
    assert len(failed) == 1  # two failures inside 10 s: one warning
    assert "per_ip" in failed[0] and f"127.0.0.1:{server.port}" in failed[0]
    assert [line for line in lines if "redis back" in line] == [
        f"rate_limit per_ip: redis back at {server.url}"
    ]


def test_redis_limiter_lets_one_probe_through_after_a_backoff(server):
    clock = FakeClock()

    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, server.url, clock=clock)
        take = functools.partial(limit.take, b"k", TOKEN_BUCKET, 10, 1.0, 10, 1)
        assert await take() is not None
        server.stop()
        try:
            assert await take() is None
            with Listener(server.port) as listener:
                clock.now += BACKOFF_FIRST
                decisions = await asyncio.gather(*(take() for _ in range(20)))
                accepted = listener.accepted
        finally:
            server.start()
        await env.aclose()
        return decisions, accepted, limit.errors

    decisions, accepted, errors = asyncio.run(run())
    assert decisions == [None] * 20
    assert accepted >= 1
    assert errors == 2  # the first failure and the one probe, not 20 attempts


def test_redis_limiter_survives_a_restart_it_did_not_see(server):
    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, server.url)
        take = functools.partial(limit.take, b"k", FIXED_WINDOW, 5, 60.0, 5, 1, now=60.0)
        first = await take()
        server.stop()  # no decision while it is down: the pooled connection is stale
        server.start()
        second = await take()  # redis-py replaces the dead connection inside the decision
        await env.aclose()
        return first, second, limit.errors

    first, second, errors = asyncio.run(run())
    assert first == (True, 5.0, 4.0, 60.0, 0.0)
    assert second == (True, 5.0, 4.0, 60.0, 0.0)  # a new server: the state was lost with it
    assert errors == 0


def test_redis_limiter_counts_a_hung_redis_as_a_failure(tmp_path):
    with RedisServer() as hung:
        hung.stop()
        with Listener(hung.port, silent=True) as listener:

            async def run():
                env = PolicyEnvironment()
                limit = limiter(env, hung.url, timeout=0.2)
                decision = await limit.take(b"k", GCRA, 10, 1.0, 10, 1)
                await env.aclose()
                return decision, limit

            decision, limit = asyncio.run(run())
            assert listener.accepted >= 1
    assert decision is None
    assert limit.errors == 1
    assert "TimeoutError" in limit.last_error


def test_redis_limiter_warns_again_only_after_ten_seconds(caplog):
    clock = FakeClock()
    caplog.set_level(logging.WARNING, logger="isekai.policies")

    async def run():
        env = PolicyEnvironment()
        # a URL nobody listens on: every attempt fails at once
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        limit = limiter(env, f"redis://127.0.0.1:{port}/0", clock=clock)
        backoffs = []
        for _ in range(8):
            assert await limit.take(b"k", TOKEN_BUCKET, 1, 1.0, 1, 1) is None
            backoffs.append(limit.state()["backoff"])
            clock.now += backoffs[-1]
        await env.aclose()
        return limit, backoffs

    limit, backoffs = asyncio.run(run())
    assert limit.errors == 8
    assert backoffs == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    warnings = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(warnings) == 2  # at 0 s and at 11.3 s (the 8th failure)
    assert "8 errors so far" in warnings[1].getMessage()


# -- Sentinel and Cluster ------------------------------------------------------------------


def test_redis_limiter_works_through_sentinel():
    with RedisServer() as master, RedisSentinel(master) as sentinel:

        async def run():
            env = PolicyEnvironment()
            limit = limiter(env, sentinel.url)
            decisions = [
                await limit.take(b"k", TOKEN_BUCKET, 1, 10.0, 3, 1, now=100.0) for _ in range(4)
            ]
            await env.aclose()
            return decisions, limit.key_name(b"k")

        decisions, name = asyncio.run(run())
        stored = command(master.port, "EXISTS", name.decode())
    assert [d[0] for d in decisions] == [True, True, True, False]
    assert stored == "1"  # the state is on the master the Sentinel named


def test_redis_limiter_works_on_a_cluster():
    with RedisCluster(3) as cluster:
        keys = [b"user-%d" % i for i in range(12)]

        async def run():
            env = PolicyEnvironment()
            limit = limiter(env, cluster.url)
            decisions = {}
            for key in keys:
                decisions[key] = [
                    await limit.take(key, FIXED_WINDOW, 2, 60.0, 2, 1, now=600.0) for _ in range(3)
                ]
            await env.aclose()
            return decisions, limit

        decisions, limit = asyncio.run(run())
        holding = [int(command(port, "DBSIZE")) for port in cluster.ports]
    assert limit.errors == 0
    for key in keys:
        assert [d[0] for d in decisions[key]] == [True, True, False], key
    assert sum(holding) == len(keys)
    assert sum(1 for n in holding if n) >= 2  # keys in different slots on different nodes


# -- the other URL forms: a Unix socket with a database, a password ------------------------


def test_redis_limiter_works_over_a_unix_socket_with_a_database(tmp_path):
    path = tmp_path / "redis.sock"
    with RedisServer([f"unixsocket {path}", "unixsocketperm 700"]) as unix_server:

        async def run():
            env = PolicyEnvironment()
            limit = limiter(env, f"unix://{path}?db=5")
            decision = await limit.take(b"k", GCRA, 1, 1.0, 1, 1, now=5.0)
            await env.aclose()
            return decision, limit.key_name(b"k").decode()

        decision, name = asyncio.run(run())
        in_db5 = command(unix_server.port, "EVAL", "redis.call('SELECT', 5) "
                         "return redis.call('EXISTS', KEYS[1])", "1", name)  # fmt: skip
        in_db0 = command(unix_server.port, "EXISTS", name)
    assert decision == (True, 1.0, 0.0, 1.0, 0.0)
    assert (in_db5, in_db0) == ("1", "0")


def test_redis_limiter_authenticates_with_the_url_password():
    with RedisServer(["requirepass p@ss:w%rd"]) as locked:
        good = f"redis://:p%40ss%3Aw%25rd@127.0.0.1:{locked.port}/0"
        bad = f"redis://:nope@127.0.0.1:{locked.port}/0"

        async def run():
            env = PolicyEnvironment()
            right, wrong = limiter(env, good), limiter(env, bad)
            decisions = (
                await right.take(b"k", TOKEN_BUCKET, 1, 1.0, 1, 1, now=1.0),
                await wrong.take(b"k", TOKEN_BUCKET, 1, 1.0, 1, 1, now=1.0),
            )
            await env.aclose()
            return decisions, wrong

        (right, wrong), limit = asyncio.run(run())
    assert right == (True, 1.0, 0.0, 1.0, 0.0)
    assert wrong is None
    assert "nope" not in (limit.last_error or "") and limit.errors == 1


@pytest.mark.parametrize("algorithm", [SLIDING_WINDOW, FIXED_WINDOW], ids=ALGORITHMS[2:])
def test_redis_limiter_window_key_starts_afresh_when_the_period_grows(shared_url, algorithm):
    """10/s then (a reload) 600/m on the same key: the stored 1 s window index is far ahead
    of any 60 s window; the key must not be held there for years."""
    now = 1_700_000_000.0  # Redis TIME-like

    async def run():
        env = PolicyEnvironment()
        limit = limiter(env, shared_url)
        try:
            for _ in range(12):
                await limit.take(b"k", algorithm, 10, 1.0, 10, 1, now=now)
            got = await limit.take(b"k", algorithm, 600, 60.0, 600, 1, now=now + 0.5)
            ttl = await env.redis(shared_url).pttl(limit.key_name(b"k"))
        finally:
            await env.aclose()
        return got, ttl

    got, ttl = asyncio.run(run())
    assert got[0] and got[2] == 599 and 0 < got[3] <= 60, got
    assert 0 < ttl <= (120 + EXPIRY_MARGIN_MS / 1000) * 1000, ttl
