"""LimitTable: decisions against tests/support/rate_reference.py (hypothesis, fake clock), the
table's memory rules (bounded, idle reuse, LRU eviction), sharing one mmap between tables and
between forked processes, and stealing the lock of a process killed inside it."""

from __future__ import annotations

import copy
import math
import mmap
import os
import select
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isekai._core.ratelimit as ratelimit_mod
from isekai._core.ratelimit import ALGORITHMS, LimitTable
from tests.support.rate_reference import Reference

FIELDS = ("allowed", "limit", "remaining", "reset", "retry_after")


def same(got, want) -> bool:
    return got[0] == want[0] and all(
        math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9)
        for g, w in zip(got[1:], want[1:], strict=True)
    )


def shared(slots: int) -> mmap.mmap:
    return mmap.mmap(-1, LimitTable.bytes_for(slots))


def test_ratelimit_module_is_compiled():
    assert ratelimit_mod.__file__.endswith(".so")
    assert ALGORITHMS == ("token_bucket", "gcra", "sliding_window", "fixed_window")


def test_ratelimit_siphash_matches_the_reference_vectors():
    # vectors_sip128.h of the SipHash reference: key 00..0f, message 00 01 .. (n - 1)
    key = bytes(range(16))
    vectors = {
        0: "a3817f04ba25a8e66df67214c7550293",
        1: "da87c1d86b99af44347659119b22fc45",
        8: "3b62a9ba6258f5610f83e264f31497b4",
        15: "5493e99933b0a8117e08ec0f97cfc3d9",
        16: "6ee2a4ca67b054bbfd3315bf85230577",
    }
    for n, want in vectors.items():
        assert ratelimit_mod._siphash128_for_test(key, bytes(range(n))).hex() == want


def test_ratelimit_now_is_the_monotonic_clock():
    before = time.monotonic()
    t = ratelimit_mod.now()
    assert before <= t <= time.monotonic()


# -- decisions against the reference -------------------------------------------------------------

limits = st.fixed_dictionaries(
    {
        "count": st.integers(1, 20).map(float),
        "period": st.sampled_from([0.1, 0.5, 1.0, 7.0, 60.0]),
        "burst": st.integers(1, 30).map(float),
    }
)
steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # key
        st.one_of(st.just(0.0), st.floats(0, 0.2), st.floats(0, 100)),  # dt >= 0
        st.integers(1, 32),  # cost
        st.booleans(),  # peek instead of take
    ),
    min_size=1,
    max_size=60,
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=limits, start=st.floats(0, 1e6), seq=steps)
def test_ratelimit_decisions_equal_the_reference(algorithm, limit, start, seq):
    table, ref = LimitTable(slots=64), Reference()
    now = start
    for key_index, dt, cost, peek in seq:
        now += dt
        key = b"k%d" % key_index
        args = (algorithm, limit["count"], limit["period"], limit["burst"])
        if peek:
            got = table.peek_py(key, *args, now=now)
            want = ref.peek(key, *args, now)
        else:
            got = table.take_py(key, *args, cost=cost, now=now)
            want = ref.take(key, *args, cost, now)
        assert same(got, want), (
            dict(zip(FIELDS, got, strict=True)),
            dict(zip(FIELDS, want, strict=True)),
        )
    assert table.stats(now=now)["evictions"] == 0


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=limits, seq=steps)
def test_ratelimit_retry_after_is_when_the_request_passes(algorithm, limit, seq):
    """Refused at t with retry_after r: the same request at t + r passes, unless it never can."""
    ref = Reference()
    now = 1000.0
    args = (algorithm, limit["count"], limit["period"], limit["burst"])
    capacity = limit["count"] if algorithm.endswith("window") else limit["burst"]
    for _key, dt, cost, _peek in seq:
        now += dt
        allowed, _limit, _remaining, _reset, retry = ref.take(b"k", *args, cost, now)
        if not allowed and cost <= capacity:
            probe = copy.deepcopy(ref)
            assert probe.take(b"k", *args, cost, now + retry)[0]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    seq=st.lists(st.tuples(st.integers(0, 11), st.floats(0, 3), st.integers(1, 3)), max_size=80),
)
def test_ratelimit_idle_slots_are_reused_without_changing_decisions(algorithm, seq):
    """One bucket of 8 slots, 12 keys: while nothing is evicted, reusing idle slots is invisible."""
    table, ref = LimitTable(slots=8), Reference()
    now = 50.0
    for key_index, dt, cost in seq:
        now += dt
        key = b"key-%d" % key_index
        got = table.take_py(key, algorithm, 4.0, 1.0, 4.0, cost=cost, now=now)
        want = ref.take(key, algorithm, 4.0, 1.0, 4.0, cost, now)
        stats = table.stats(now=now)
        assert stats["used"] <= 8
        if stats["evictions"]:
            break
        assert same(got, want)


# -- edges ---------------------------------------------------------------------------------------


def test_ratelimit_token_bucket_burst_and_cost():
    t = LimitTable(slots=16)
    # 1/s with a burst of 5: five at once, then one per second
    assert [t.take_py(b"a", "token_bucket", 1, 1, 5, now=10.0)[0] for _ in range(6)] == [
        True
    ] * 5 + [False]
    assert t.take_py(b"a", "token_bucket", 1, 1, 5, now=10.0) == (False, 5, 0, 5.0, 1.0)
    assert t.take_py(b"a", "token_bucket", 1, 1, 5, now=11.0) == (True, 5, 0, 5.0, 0.0)
    # a cost above the burst never passes and takes nothing
    assert t.take_py(b"b", "token_bucket", 1, 1, 5, cost=6, now=10.0) == (False, 5, 5, 0.0, 1.0)
    assert t.take_py(b"b", "token_bucket", 1, 1, 5, cost=5, now=10.0) == (True, 5, 0, 5.0, 0.0)


def test_ratelimit_gcra_admits_like_the_token_bucket():
    t = LimitTable(slots=16)
    for alg in ("token_bucket", "gcra"):
        got = [t.take_py(alg.encode(), alg, 2, 1, 3, now=100.0)[0] for _ in range(4)]
        assert got == [True, True, True, False]
        # 2/s: one more every half second
        assert t.take_py(alg.encode(), alg, 2, 1, 3, now=100.5)[0]
        assert not t.take_py(alg.encode(), alg, 2, 1, 3, now=100.5)[0]
    assert t.take_py(b"g", "gcra", 2, 1, 3, cost=4, now=5.0)[0] is False


def test_ratelimit_fixed_window_is_aligned_to_the_clock():
    t = LimitTable(slots=16)
    assert t.take_py(b"w", "fixed_window", 2, 10, 1, cost=2, now=19.0) == (True, 2, 0, 1.0, 0.0)
    assert t.take_py(b"w", "fixed_window", 2, 10, 1, now=19.5) == (False, 2, 0, 0.5, 0.5)
    assert t.take_py(b"w", "fixed_window", 2, 10, 1, now=20.0) == (True, 2, 1, 10.0, 0.0)
    # a cost above count: refused, retry when the window ends
    assert t.take_py(b"x", "fixed_window", 2, 10, 1, cost=3, now=21.0) == (False, 2, 2, 9.0, 9.0)


def test_ratelimit_sliding_window_weighs_the_previous_window():
    t = LimitTable(slots=16)
    assert t.take_py(b"s", "sliding_window", 10, 1, 1, cost=10, now=7.0)[0]
    # a quarter into the next window: 10 * 0.75 = 7.5 still counted
    allowed, limit, remaining, reset, retry = t.take_py(
        b"s", "sliding_window", 10, 1, 1, cost=3, now=8.25
    )
    assert (allowed, limit, remaining, reset) == (False, 10, 2, 0.75)
    assert math.isclose(retry, 0.05)  # 10 * (1 - 0.3) = 7: at 8.3
    assert t.take_py(b"s", "sliding_window", 10, 1, 1, cost=3, now=8.3 + 1e-9)[0]


def test_ratelimit_peek_inserts_nothing_and_changes_nothing():
    t = LimitTable(slots=16)
    assert t.peek_py(b"p", "token_bucket", 10, 1, 10, now=1.0) == (True, 10, 10, 0.0, 0.0)
    assert t.stats(now=1.0)["used"] == 0
    t.take_py(b"p", "token_bucket", 10, 1, 10, cost=4, now=1.0)
    assert t.peek_py(b"p", "token_bucket", 10, 1, 10, now=1.0)[2] == 6
    assert t.peek_py(b"p", "token_bucket", 10, 1, 10, now=1.0)[2] == 6
    assert t.take_py(b"p", "token_bucket", 10, 1, 10, now=1.0)[2] == 5


def test_ratelimit_another_algorithm_on_a_key_resets_it():
    t = LimitTable(slots=16)
    while t.take_py(b"k", "token_bucket", 1, 60, 3, now=1.0)[0]:
        pass
    assert t.take_py(b"k", "gcra", 1, 60, 3, now=1.0) == (True, 3, 2, 60.0, 0.0)
    assert t.take_py(b"k", "fixed_window", 1, 60, 3, now=1.0)[:3] == (True, 1, 0)


@pytest.mark.parametrize(
    "args, message",
    [
        (("token_bucket", 0, 1, 1), "count"),
        (("gcra", 1, -1, 1), "period"),
        (("token_bucket", 1, 1, 0.5), "burst"),
        (("leaky", 1, 1, 1), "unknown"),
        (("fixed_window", float("nan"), 1, 1), "count"),
    ],
)
def test_ratelimit_bad_limits_are_value_errors(args, message):
    with pytest.raises(ValueError, match=message):
        LimitTable(slots=8).take_py(b"k", *args, now=1.0)


def test_ratelimit_bad_cost_or_clock_are_value_errors():
    t = LimitTable(slots=8)
    with pytest.raises(ValueError, match="cost"):
        t.take_py(b"k", "gcra", 1, 1, 1, cost=-1, now=1.0)
    with pytest.raises(ValueError, match="clock"):
        t.take_py(b"k", "gcra", 1, 1, 1, now=float("inf"))
    assert t.stats(now=1.0)["used"] == 0


# -- memory --------------------------------------------------------------------------------------


def test_ratelimit_many_live_keys_stay_within_the_slots():
    t = LimitTable(slots=64)
    for i in range(10_000):
        assert t.take_py(b"client-%d" % i, "token_bucket", 1, 3600, 5, now=1.0)[0]
    stats = t.stats(now=1.0)
    assert stats["slots"] == 64 and 0 < stats["used"] <= 64
    # every key that found no slot of its own nor a free or idle one pushed a live key out
    assert stats["evictions"] + stats["used"] == 10_000
    assert t.stats(now=1e9)["used"] == 0  # an hour later they are all idle


def test_ratelimit_idle_keys_give_way_without_evictions():
    t = LimitTable(slots=64)
    for i in range(10_000):  # 10/s, burst 10: full again 0.1 s after one request
        assert t.take_py(b"client-%d" % i, "token_bucket", 10, 1, 10, now=i * 0.2)[0]
    stats = t.stats(now=10_000 * 0.2)
    assert stats["evictions"] == 0 and stats["used"] == 0


def test_ratelimit_full_bucket_evicts_the_least_recently_used_key():
    t = LimitTable(slots=8)  # one bucket
    assert t.slots == 8
    keys = [b"user-%d" % i for i in range(9)]
    for i, key in enumerate(keys[:8]):
        t.take_py(key, "fixed_window", 5, 3600, 1, cost=5, now=float(i))
    for i, key in enumerate(keys[1:8]):  # touch all but user-0 again (refused, still a use)
        assert not t.take_py(key, "fixed_window", 5, 3600, 1, now=10.0 + i)[0]
    assert t.take_py(keys[8], "fixed_window", 5, 3600, 1, now=20.0)[0]
    assert t.stats(now=20.0)["evictions"] == 1
    assert t.peek_py(keys[0], "fixed_window", 5, 3600, 1, now=20.0)[2] == 5  # forgotten: fresh
    for key in keys[1:8]:
        assert t.peek_py(key, "fixed_window", 5, 3600, 1, now=20.0)[2] == 0  # remembered


def test_ratelimit_bytes_for_rounds_up_to_buckets():
    assert LimitTable.bytes_for(1) == LimitTable.bytes_for(8)
    assert LimitTable.bytes_for(9) == LimitTable.bytes_for(16) > LimitTable.bytes_for(8)
    assert LimitTable(slots=9).slots == 16
    with pytest.raises(ValueError):
        LimitTable.bytes_for(0)


def test_ratelimit_wrong_buffers_are_value_errors():
    with pytest.raises(ValueError, match="bytes"):
        LimitTable(shared(64), slots=128)
    with pytest.raises(ValueError, match="writable"):
        LimitTable(bytes(LimitTable.bytes_for(8)), slots=8)
    garbage = bytearray(LimitTable.bytes_for(8))
    garbage[:8] = b"notmagic"
    with pytest.raises(ValueError, match="magic"):
        LimitTable(garbage, slots=8)


def test_ratelimit_two_tables_over_one_mmap_share_state():
    buf = shared(256)
    a, b = LimitTable(buf, slots=256), LimitTable(buf, slots=256)
    for i in range(3):
        assert a.take_py(b"key", "gcra", 1, 60, 5, now=100.0)[2] == 4 - i
    assert b.peek_py(b"key", "gcra", 1, 60, 5, now=100.0)[2] == 2
    assert b.take_py(b"key", "gcra", 1, 60, 5, now=100.0)[2] == 1
    assert a.stats(now=100.0) == b.stats(now=100.0)
    assert a.stats(now=100.0)["used"] == 1
    private = LimitTable(slots=256)  # its own memory
    assert private.peek_py(b"key", "gcra", 1, 60, 5, now=100.0)[2] == 5


def test_ratelimit_hash_key_is_random_per_table_and_in_the_shared_header():
    one, two = shared(64), shared(64)
    LimitTable(one, slots=64)
    LimitTable(two, slots=64)
    key_one, key_two = one[32:48], two[32:48]  # TableHeader.k0, k1
    assert key_one != bytes(16) and key_two != bytes(16) and key_one != key_two
    LimitTable(one, slots=64)  # a second table over the same memory reuses it
    assert one[32:48] == key_one


# -- processes -----------------------------------------------------------------------------------


def fork(body) -> tuple[int, int]:
    """Run ``body()`` -> int in a child; (pid, read end of a pipe that gets the number)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.write(w, b"%d" % body())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def result(pid: int, r: int, timeout: float = 30.0) -> int:
    ready, _, _ = select.select([r], [], [], timeout)
    try:
        assert ready, "child did not report in time"
        data = os.read(r, 64)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return int(data)
    finally:
        os.close(r)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ratelimit_forked_processes_admit_exactly_the_limit(algorithm):
    """Two processes hammer one key at one instant, started together: between them they get
    exactly the limit (a lost update between the read and the write of a slot would give more)."""
    buf = shared(1024)  # zeroed: both children race to initialise it
    limit = 50_000
    go_r, go_w = os.pipe()

    def child() -> int:
        table = LimitTable(buf, slots=1024)
        os.read(go_r, 1)
        return table.count_allowed([b"shared-key"], limit, algorithm, limit, 3600, limit, now=500.0)

    children = [fork(child), fork(child)]
    os.close(go_r)
    os.write(go_w, b"go")
    os.close(go_w)
    totals = [result(pid, r) for pid, r in children]
    assert sum(totals) == limit
    assert LimitTable(buf, slots=1024).stats(now=500.0)["used"] == 1


def test_ratelimit_forked_processes_follow_the_real_clock():
    buf = shared(1024)
    table = LimitTable(buf, slots=1024)  # made before the fork, as the master does

    def child() -> int:
        deadline, allowed, rounds = time.monotonic() + 0.5, 0, 0
        while time.monotonic() < deadline and rounds < 50_000:
            allowed += table.count_allowed([b"slow"], 10, "token_bucket", 4, 1, 4)
            rounds += 1
        return allowed

    started = time.monotonic()
    children = [fork(child), fork(child)]
    totals = [result(pid, r) for pid, r in children]
    elapsed = time.monotonic() - started
    # a full bucket of 4, then 4 per second for at most `elapsed` seconds
    assert 4 <= sum(totals) <= 4 + math.floor(4 * elapsed + 1e-6)


def test_ratelimit_lock_of_a_killed_process_is_stolen():
    buf = shared(64)
    table = LimitTable(buf, slots=64)
    r, w = os.pipe()
    holder = os.fork()
    if holder == 0:  # pragma: no cover - the child
        try:
            table._hold_lock_for_test(b"victim")
            os.write(w, b"!")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(w)
    waiter = None
    try:
        assert select.select([r], [], [], 10)[0], "the holder did not take the lock"
        waiter = fork(
            lambda: LimitTable(buf, slots=64).take_py(b"victim", "gcra", 1, 1, 1, now=0.0)[0]
        )
        # the holder lives: the waiter waits
        assert select.select([waiter[1]], [], [], 0.3)[0] == []
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)  # reaped: kill(pid, 0) now says ESRCH
        holder = 0
        assert result(*waiter, timeout=10) == 1
        waiter = None
        assert table.stats(now=0.0)["lock_steals"] == 1
    finally:
        os.close(r)
        for pid in (holder, waiter[0] if waiter else 0):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass


def test_ratelimit_lock_left_by_this_process_is_stolen():
    table = LimitTable(slots=8)
    table._hold_lock_for_test(b"k")
    assert table.take_py(b"k", "token_bucket", 1, 1, 1, now=1.0)[0]
    assert table.stats(now=1.0)["lock_steals"] == 1


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window"])
def test_ratelimit_window_key_starts_afresh_when_the_period_grows(algorithm):
    """A reload from 10/s to 600/m keeps the policy's name, so its keys and their state: the
    stored window index (of 1 s windows) is far ahead of any 60 s window. The key must not be
    held in that 'future' window (its reset would be ~59 * now seconds away)."""
    t, ref = LimitTable(slots=16), Reference()
    now = 1_000_000.0
    for _ in range(12):
        t.take_py(b"k", algorithm, 10, 1.0, 10, now=now)
        ref.take(b"k", algorithm, 10, 1.0, 10, 1, now)
    now += 0.5
    got = t.take_py(b"k", algorithm, 600, 60.0, 600, now=now)
    assert got[0] and got[2] == 599 and 0 < got[3] <= 60, got
    assert same(got, ref.take(b"k", algorithm, 600, 60.0, 600, 1, now))
    # one window back is still the stored window (two processes reading the clock around a
    # boundary), as before
    t.take_py(b"j", algorithm, 4, 1.0, 4, now=11.0)
    assert t.take_py(b"j", algorithm, 4, 1.0, 4, now=10.999)[2] == 2
