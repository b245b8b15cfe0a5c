"""The reference model of the four rate-limit algorithms: slow, plain, obviously right.

The local table (``isekai._core.ratelimit``) and the Redis backend
(``isekai.policies.rate_limit_redis``) must both give the decisions this model
gives, field by field, for any sequence of (key, now, cost); the property tests
of both compare against it with a fake clock. It keeps one dict entry per key
and never forgets anything, so it is the truth about semantics, not about memory.

A limit is (algorithm, count, period, burst): ``count`` requests per ``period``
seconds, ``burst`` the capacity of token_bucket and gcra (>= 1; the window
algorithms ignore it). ``cost`` is what one request takes. A decision is the
tuple ``(allowed, limit, remaining, reset, retry_after)`` in requests and seconds.

- token_bucket: ``burst`` tokens, refilled continuously at ``rate = count/period``
  per second, starting full. Allowed iff tokens >= cost, then tokens -= cost (a
  refused request takes nothing). limit = burst; remaining = floor(tokens after);
  reset = seconds until full again = (burst - tokens)/rate; retry_after = 0 when
  allowed, else (cost - tokens)/rate (also when cost > burst, which never passes).
- gcra: one theoretical arrival time TAT, emission interval T = period/count.
  Allowed iff max(TAT, now) + cost*T - now <= burst*T, then TAT = max(TAT, now) +
  cost*T. limit = burst; remaining = floor((burst*T - (TAT' - now))/T) >= 0 and
  reset = TAT' - now >= 0, with TAT' = the new TAT when allowed, max(TAT, now)
  when refused; retry_after = 0 when allowed, else
  max(TAT, now) + cost*T - burst*T - now.
- fixed_window: windows [k*period, (k+1)*period) of the clock, k = floor(now/period);
  at most count per window. limit = count; remaining = floor(count - used after) >= 0;
  reset = window end - now; retry_after = 0 when allowed, else reset (also when
  cost > count, which never passes).
- sliding_window: the weighted two-window estimate (Cloudflare, Kong, nginx plus):
  elapsed = now - k*period, estimate = prev*(1 - elapsed/period) + curr, where curr
  is what window k took and prev what window k-1 took. Allowed iff estimate + cost
  <= count, then curr += cost. limit = count; remaining = floor(count - estimate')
  >= 0 with estimate' = estimate + cost when allowed, estimate when refused (as
  token_bucket: a refused request takes nothing); reset = period - elapsed (the end
  of the current window); retry_after = 0 when allowed, else the smallest t > 0 with
  estimate(now + t) + cost <= count: solved linearly inside the current window, else
  linearly inside the next one (where prev' = curr, curr' = 0) -- one of the two
  always has it when cost <= count; when cost > count, reset. Then at least 0.001.

Floating point, so that every implementation decides alike on the edges:
- every admission test allows ``EPS = 1e-6`` requests of slack (gcra: EPS*T
  seconds): ``tokens + EPS >= cost``, ``new - now <= (burst + EPS)*T``,
  ``estimate + cost <= count + EPS``, ``used + cost <= count + EPS``;
- every floor is ``floor(x + EPS)`` (0.9/0.1 is 8.999999999999998 in IEEE doubles,
  and that is 9 requests), then clamped at 0;
- reset and retry_after are clamped at 0 (sliding_window retry_after at 0.001).
- A clock that steps back (now < the stored stamp) refills nothing and moves no
  stamp backwards; windows are by k = floor(now/period) as stored, a window index
  one below the stored one is treated as the stored one. A stored index more than one
  ahead of now's is a window of another period (a reload changed the rate: the key bytes
  stay, the period does not): the key starts afresh, so it is never held in a window that
  ends (new period / old period) times the clock's value later.

``peek`` is the decision a request of cost 0 would get now, without changing
anything; an unknown key reads as a fresh one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ALGORITHMS = ("token_bucket", "gcra", "sliding_window", "fixed_window")
EPS = 1e-6

Decision = tuple[bool, float, float, float, float]


def _floor(x: float) -> float:
    return float(max(0, math.floor(x + EPS)))


@dataclass
class _State:
    algorithm: str
    a: float = 0.0  # token_bucket: tokens; gcra: TAT; windows: window index k
    b: float = 0.0  # token_bucket: stamp; windows: curr (used in window k)
    c: float = 0.0  # sliding_window: prev (used in window k-1)


@dataclass
class Reference:
    """One dict entry per key; ``take`` and ``peek`` as the module docstring says."""

    states: dict[bytes, _State] = field(default_factory=dict)

    def take(
        self,
        key: bytes,
        algorithm: str,
        count: float,
        period: float,
        burst: float,
        cost: float,
        now: float,
    ) -> Decision:
        state = self.states.get(key)
        if state is None or state.algorithm != algorithm:
            state = _fresh(algorithm, count, period, burst, now)
        decision, new_state = _decide(state, count, period, burst, cost, now)
        self.states[key] = new_state
        return decision

    def peek(
        self, key: bytes, algorithm: str, count: float, period: float, burst: float, now: float
    ) -> Decision:
        state = self.states.get(key)
        if state is None or state.algorithm != algorithm:
            state = _fresh(algorithm, count, period, burst, now)
        return _decide(state, count, period, burst, 0.0, now)[0]


def _fresh(algorithm: str, count: float, period: float, burst: float, now: float) -> _State:
    if algorithm == "token_bucket":
        return _State(algorithm, burst, now)
    if algorithm == "gcra":
        return _State(algorithm, now)
    if algorithm in ("sliding_window", "fixed_window"):
        return _State(algorithm, math.floor(now / period), 0.0, 0.0)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def _decide(
    s: _State, count: float, period: float, burst: float, cost: float, now: float
) -> tuple[Decision, _State]:
    if s.algorithm == "token_bucket":
        rate = count / period
        elapsed = now - s.b
        if elapsed > 0:
            tokens = min(burst, s.a + elapsed * rate)
            stamp = now
        else:
            tokens = s.a
            stamp = s.b
        allowed = tokens + EPS >= cost
        if allowed:
            tokens -= cost
        remaining = _floor(tokens)
        reset = max(0.0, (burst - tokens) / rate)
        retry = 0.0 if allowed else max(0.0, (cost - tokens) / rate)
        return (allowed, burst, remaining, reset, retry), _State(s.algorithm, tokens, stamp)

    if s.algorithm == "gcra":
        t = period / count
        tat = max(s.a, now)
        new = tat + cost * t
        allowed = new - now <= (burst + EPS) * t
        if allowed:
            tat = new
        remaining = _floor((burst * t - (tat - now)) / t)
        reset = max(0.0, tat - now)
        retry = 0.0 if allowed else max(0.0, new - burst * t - now)
        return (allowed, burst, remaining, reset, retry), _State(s.algorithm, tat)

    k = float(math.floor(now / period))
    if s.a > k + 1:  # a window of another period (a reload changed it): start afresh
        s = _State(s.algorithm, k, 0.0, 0.0)
    k = max(k, s.a)
    if k == s.a:
        curr, prev = s.b, s.c
    elif k == s.a + 1:
        curr, prev = 0.0, s.b
    else:
        curr, prev = 0.0, 0.0
    reset = max(0.0, (k + 1) * period - now)

    if s.algorithm == "fixed_window":
        allowed = curr + cost <= count + EPS
        if allowed:
            curr += cost
        remaining = _floor(count - curr)
        retry = 0.0 if allowed else reset
        return (allowed, count, remaining, reset, retry), _State(s.algorithm, k, curr, 0.0)

    if s.algorithm == "sliding_window":
        elapsed = max(0.0, now - k * period)
        estimate = prev * (1.0 - elapsed / period) + curr
        allowed = estimate + cost <= count + EPS
        if allowed:
            curr += cost
            estimate += cost
        remaining = _floor(count - estimate)
        retry = 0.0 if allowed else _sliding_retry(prev, curr, count, period, cost, elapsed, reset)
        return (allowed, count, remaining, reset, retry), _State(s.algorithm, k, curr, prev)

    raise ValueError(f"unknown algorithm {s.algorithm!r}")


def _sliding_retry(
    prev: float, curr: float, count: float, period: float, cost: float, elapsed: float, reset: float
) -> float:
    """The smallest t > 0 with estimate(now + t) + cost <= count, at least 0.001."""
    if cost > count:
        return max(0.001, reset)
    room = count - cost - curr  # what prev's weighted share may be, in this window
    if prev > 0 and room >= 0:
        # prev * (1 - (elapsed + t)/period) <= room
        t = period * (1.0 - room / prev) - elapsed
        if t <= reset:
            return max(0.001, t)
    # next window: prev' = curr, curr' = 0; curr * (1 - e/period) <= count - cost
    room = count - cost
    if curr <= room:
        return max(0.001, reset)
    return max(0.001, reset + period * (1.0 - room / curr))
