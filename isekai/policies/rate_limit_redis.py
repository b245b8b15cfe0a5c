"""The Redis backend of the ``rate_limit`` policy: `RedisLimiter`, limits exact across hosts.

Every gateway that names the same Redis shares one count per key, so a limit of R/s holds for
the whole fleet, not R/s per host. A decision is ONE round trip: one Lua script (`SCRIPT`,
sent as ``EVALSHA`` and, the first time a server has not seen it, as ``EVAL``) reads the key's
state, decides, writes the new state and sets the key's expiry, atomically (Redis runs one
script at a time, so two gateways never both take the last token).

The script implements the four algorithms with exactly the semantics of the local table
(``isekai._core.ratelimit``) and of the reference model (``tests/support/rate_reference.py``):
token_bucket (0), gcra (1), sliding_window (2), fixed_window (3); the same ``EPS`` slack on
every admission test and floor, the same clamps, the same handling of a clock that steps back.
Numbers cross the wire as decimal strings with 17 significant digits (a Lua number returned
as-is would be truncated to an integer by Redis), so the script computes in the same IEEE
doubles as Python and gives the same decisions bit for bit.

- The clock is the Redis server's ``TIME``, read inside the script, so every host agrees on it
  (a host's own clock drift does not matter); a test passes ``now`` instead (a fake clock).
  Redis 5 and later replicate a script by its effects, so reading ``TIME`` in a writing script
  is fine (the script asks older servers for that with ``redis.replicate_commands()``).
- The state of a key is one hash, ``PREFIX{KEY}`` (the whole key is a hash tag, so in a
  cluster the state of one key lives in one slot; a prefix should not contain ``{``): the
  algorithm ``g`` and up to three numbers ``a b c`` (tokens and stamp; TAT; window index,
  current and previous count). A key whose algorithm changed reads as fresh.
- Memory stays bounded: every take sets ``PEXPIRE`` to the time after which the key's state
  is the same as a fresh key's (token_bucket: full again; gcra: TAT passed; fixed_window: the
  window ended; sliding_window: the next window ended), plus `EXPIRY_MARGIN_MS`.

Failure is explicit, never an exception: `RedisLimiter.take` returns None when Redis is
unreachable, slow (more than ``timeout`` seconds for the decision), answers an error, or the
limiter is backing off; the caller applies ``on_backend_error`` (allow or deny). A failure is
counted (``errors``), logged as a warning at most once per `WARN_EVERY` seconds per limiter,
and starts a back-off: for `BACKOFF_FIRST` seconds (doubling on each failed retry, at most
`BACKOFF_MAX`) every decision returns None at once without touching Redis; then one decision
goes through as a probe (the others still return None) and a success ends the back-off (one
"redis back" line). redis-py replaces dead pooled connections by itself, so a Redis that was
restarted is used again as soon as the probe succeeds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

from isekai.config.redis_url import describe_redis_url

__all__ = [
    "ALGORITHMS",
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "EXPIRY_MARGIN_MS",
    "SCRIPT",
    "WARN_EVERY",
    "RedisLimiter",
]

log = logging.getLogger("isekai.policies")

ALGORITHMS = ("token_bucket", "gcra", "sliding_window", "fixed_window")  # index = the int
BACKOFF_FIRST = 0.1  # seconds without Redis after the first failure
BACKOFF_MAX = 5.0  # the longest back-off (it doubles on every failed probe)
WARN_EVERY = 10.0  # seconds between two warnings of one limiter
EXPIRY_MARGIN_MS = 1000  # kept this long after the state became the same as a fresh key's

Decision = tuple[bool, float, float, float, float]

# KEYS[1] the state; ARGV: mode ("take" | "peek"), algorithm 0-3, count, period, burst, cost,
# now ("" = the server's TIME), expiry margin in ms. Returns {allowed, limit, remaining, reset,
# retry_after} as strings ("1"/"0" for allowed). Transcribed from tests/support/rate_reference.py:
# keep the order of every operation (floating point).
SCRIPT = r"""
local EPS = 1e-6
local key = KEYS[1]
local mode = ARGV[1]
local alg = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local period = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local cost = tonumber(ARGV[6])
local now
if ARGV[7] == '' then
  -- Redis < 5 replicates a script verbatim unless told to replicate its effects
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[7])
end
local margin = tonumber(ARGV[8])
if mode == 'peek' then cost = 0 end

local function fl(x)
  local v = math.floor(x + EPS)
  if v < 0 then return 0 end
  return v
end
local function num(x) return string.format('%.17g', x) end

local g, a, b, c
local stored = redis.call('HMGET', key, 'g', 'a', 'b', 'c')
if stored[1] and tonumber(stored[1]) == alg then
  g = alg
  a = tonumber(stored[2]) or 0
  b = tonumber(stored[3]) or 0
  c = tonumber(stored[4]) or 0
else
  if alg == 0 then a, b, c = burst, now, 0
  elseif alg == 1 then a, b, c = now, 0, 0
  else a, b, c = math.floor(now / period), 0, 0 end
end

local allowed, limit, remaining, reset, retry, idle
if alg == 0 then
  local rate = count / period
  local elapsed = now - b
  local tokens, stamp
  if elapsed > 0 then
    tokens = math.min(burst, a + elapsed * rate)
    stamp = now
  else
    tokens = a
    stamp = b
  end
  allowed = tokens + EPS >= cost
  if allowed then tokens = tokens - cost end
  remaining = fl(tokens)
  reset = math.max(0, (burst - tokens) / rate)
  if allowed then retry = 0 else retry = math.max(0, (cost - tokens) / rate) end
  limit = burst
  a, b, c = tokens, stamp, 0
  idle = reset
elseif alg == 1 then
  local t = period / count
  local tat = math.max(a, now)
  local new = tat + cost * t
  allowed = new - now <= (burst + EPS) * t
  if allowed then tat = new end
  remaining = fl((burst * t - (tat - now)) / t)
  reset = math.max(0, tat - now)
  if allowed then retry = 0 else retry = math.max(0, new - burst * t - now) end
  limit = burst
  a, b, c = tat, 0, 0
  idle = reset
else
  local k = math.floor(now / period)
  -- a window of another period (a reload changed the rate; the key stayed): start afresh
  if a > k + 1 then a, b, c = k, 0, 0 end
  k = math.max(k, a)
  local curr, prev
  if k == a then curr, prev = b, c
  elseif k == a + 1 then curr, prev = 0, b
  else curr, prev = 0, 0 end
  reset = math.max(0, (k + 1) * period - now)
  limit = count
  if alg == 3 then
    allowed = curr + cost <= count + EPS
    if allowed then curr = curr + cost end
    remaining = fl(count - curr)
    if allowed then retry = 0 else retry = reset end
    a, b, c = k, curr, 0
    idle = reset
  else
    local elapsed = math.max(0, now - k * period)
    local estimate = prev * (1 - elapsed / period) + curr
    allowed = estimate + cost <= count + EPS
    if allowed then
      curr = curr + cost
      estimate = estimate + cost
    end
    remaining = fl(count - estimate)
    if allowed then
      retry = 0
    elseif cost > count then
      retry = math.max(0.001, reset)
    else
      retry = nil
      local room = count - cost - curr
      if prev > 0 and room >= 0 then
        local t = period * (1 - room / prev) - elapsed
        if t <= reset then retry = math.max(0.001, t) end
      end
      if retry == nil then
        room = count - cost
        if curr <= room then
          retry = math.max(0.001, reset)
        else
          retry = math.max(0.001, reset + period * (1 - room / curr))
        end
      end
    end
    a, b, c = k, curr, prev
    idle = reset + period
  end
end

if mode == 'take' then
  redis.call('HSET', key, 'g', alg, 'a', num(a), 'b', num(b), 'c', num(c))
  local ms = math.ceil(math.min(idle, 315360000) * 1000) + margin
  redis.call('PEXPIRE', key, string.format('%d', ms))
end
local ok = '0'
if allowed then ok = '1' end
return {ok, num(limit), num(remaining), num(reset), num(retry)}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


class RedisLimiter:
    """Decisions of one ``rate_limit`` policy in a shared Redis (see the module's text).

    ``client()`` gives the worker's Redis client for the policy's URL (``env.redis`` bound
    to it); it is called on the loop at each decision, so the client is made on first use.
    ``prefix`` starts every key; ``timeout`` bounds one decision, in seconds; ``name`` (the
    policy) and ``url`` (shown without its password) name the limiter in log lines;
    ``clock`` (monotonic seconds) times the back-off and the warnings.
    """

    def __init__(
        self,
        client: Callable[[], Any],
        *,
        prefix: str,
        timeout: float,
        name: str,
        url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.clock = clock
        self.prefix = prefix.encode("utf-8", "surrogateescape")
        self.timeout = timeout
        self.name = name
        self.url = describe_redis_url(url) if url else None
        self.errors = 0  # failures since the limiter was made
        self.last_error: str | None = None
        self._failures = 0  # consecutive failed back-off rounds (0: Redis is up)
        self._until = 0.0  # monotonic time before which no decision reaches Redis
        self._probing = False  # a decision is testing Redis after a back-off
        self._warned = -WARN_EVERY  # monotonic time of the last warning

    def key_name(self, key: bytes) -> bytes:
        """The Redis key of ``key``'s state."""
        return self.prefix + b"{" + key + b"}"

    async def take(
        self,
        key: bytes,
        algorithm: int,
        count: float,
        period: float,
        burst: float,
        cost: int,
        now: float | None = None,
    ) -> Decision | None:
        """Take ``cost`` for ``key``: (allowed, limit, remaining, reset, retry_after), or None
        when Redis failed or the limiter is backing off (the caller's ``on_backend_error``)."""
        return await self._decide(b"take", key, algorithm, count, period, burst, cost, now)

    async def peek(
        self,
        key: bytes,
        algorithm: int,
        count: float,
        period: float,
        burst: float,
        now: float | None = None,
    ) -> Decision | None:
        """The decision a request of cost 0 would get now, changing nothing (None: as take)."""
        return await self._decide(b"peek", key, algorithm, count, period, burst, 0, now)

    def state(self) -> dict[str, Any]:
        """``{"up", "errors", "backoff" (seconds left), "last_error"}`` for admin output."""
        left = max(0.0, self._until - self.clock()) if self._failures else 0.0
        return {
            "up": self._failures == 0,
            "errors": self.errors,
            "backoff": round(left, 3),
            "last_error": self.last_error,
        }

    async def _decide(
        self,
        mode: bytes,
        key: bytes,
        algorithm: int,
        count: float,
        period: float,
        burst: float,
        cost: int,
        now: float | None,
    ) -> Decision | None:
        probe = False
        if self._failures:
            if self._probing or self.clock() < self._until:
                return None
            self._probing = probe = True
        args = (
            mode,
            b"%d" % algorithm,
            repr(float(count)).encode(),
            repr(float(period)).encode(),
            repr(float(burst)).encode(),
            b"%d" % cost,
            b"" if now is None else repr(float(now)).encode(),
            b"%d" % EXPIRY_MARGIN_MS,
        )
        try:
            reply = await asyncio.wait_for(self._run(self.key_name(key), args), self.timeout)
            decision = (
                reply[0] in (b"1", "1"),
                float(reply[1]),
                float(reply[2]),
                float(reply[3]),
                float(reply[4]),
            )
        except Exception as exc:  # refused, reset, timeout, script error, bad reply: all alike
            self._failed(exc)
            return None
        finally:
            if probe:
                self._probing = False
        if self._failures:
            self._failures = 0
            log.warning("rate_limit %s: redis back%s", self.name, self._where())
        return decision

    async def _run(self, name: bytes, args: tuple[bytes, ...]) -> Any:
        client = self.client()
        try:
            return await client.evalsha(SCRIPT_SHA, 1, name, *args)
        except NoScriptError:
            pass
        return await client.eval(SCRIPT, 1, name, *args)  # loads it for the next EVALSHA

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        text = str(exc) or type(exc).__name__
        self.last_error = f"{type(exc).__name__}: {text}"[:300]
        moment = self.clock()
        if moment >= self._until:  # not already backing off: the first failure or a probe's
            self._failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failures - 1))
            self._until = moment + delay
        if moment - self._warned >= WARN_EVERY:
            self._warned = moment
            log.warning(
                "rate_limit %s: redis%s failed (%s); on_backend_error applies, next try in "
                "%.1fs (%d errors so far)",
                self.name,
                self._where(),
                self.last_error,
                max(0.0, self._until - moment),
                self.errors,
            )

    def _where(self) -> str:
        return f" at {self.url}" if self.url else ""
