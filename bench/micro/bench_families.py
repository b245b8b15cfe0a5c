"""Micro-benchmark: what each hot policy family adds to a request, in ns.

Run after building the extension:  PYTHONPATH=. python bench/micro/bench_families.py
The browser-like GET of bench_parse.py (11 fields, with an allowed `Origin`) is fed to a
DownstreamProtocol over an in-memory transport and answered by a direct route, first with no
policy, then with each family alone, then with the three (the small_get_policies chain of
bench/run.py); the request and response phases both run. ip_filter is measured with 10 and
with 10,000 networks in its allow list; rate_limit (a private table, one hot key, a rate never
reached) without and with the RateLimit response fields. The cases are interleaved, ROUNDS
times over (each a run of LOOPS requests), and each keeps its best run: a shared machine's
bursts hit all alike.
"""

from __future__ import annotations

import ipaddress
import random
from types import SimpleNamespace

import bench_parse
from bench_parse import BROWSER, make_state, per_request_ns

from isekai.chains import as_core
from isekai.config.rate_limit_policy import RateLimitConfig
from isekai.config.units import Rate
from isekai.policies import BUILDERS
from isekai.policies.environment import PolicyEnvironment

PATH = b"/api/v1/users/42"
ROUNDS = 9
LOOPS = 20_000


def edits(**kw):
    values = {"add": (), "set": (), "remove": (), "rename": ()}
    values.update(kw)
    return SimpleNamespace(**values)


def networks(count: int) -> tuple[str, ...]:
    rng = random.Random(count)
    nets = {"127.0.0.0/8"}
    while len(nets) < count:
        prefix = rng.choice((16, 24, 24, 32))
        nets.add(str(ipaddress.IPv4Network((rng.getrandbits(32), prefix), strict=False)))
    return tuple(sorted(nets))


def policies() -> dict:
    headers = BUILDERS["headers"](
        SimpleNamespace(
            request=edits(set=(("X-Gateway", "isekai"), ("X-Client-IP", "${client_ip}"))),
            response=edits(set=(("X-Served-By", "isekai"),)),
        )
    )
    cors = BUILDERS["cors"](
        SimpleNamespace(
            origins=("https://app.example.com", "*.example.org"),
            methods=("GET", "HEAD", "POST"),
            headers=(),
            expose_headers=("X-Served-By",),
            credentials=False,
            max_age=None,
        )
    )
    small = BUILDERS["ip_filter"](SimpleNamespace(allow=networks(10), deny=()))
    big = BUILDERS["ip_filter"](SimpleNamespace(allow=networks(10_000), deny=()))
    floor = BUILDERS["headers"](
        SimpleNamespace(request=edits(), response=edits(remove=("x-absent",)))
    )
    env = PolicyEnvironment()
    never = Rate(1e9, 1.0)  # a rate never reached: every request takes and passes
    limit = BUILDERS["rate_limit"](RateLimitConfig(rate=never), env)
    limit_headers = BUILDERS["rate_limit"](RateLimitConfig(rate=never, headers=True), env)
    return {
        "headers": headers,
        "cors": cors,
        "ip10": small,
        "ip10k": big,
        "floor": floor,
        "rate_limit": limit,
        "rate_limit_headers": limit_headers,
    }


def results() -> list[tuple[str, float]]:
    made = {name: as_core(p) for name, p in policies().items()}
    cases = [
        ("no policy", ()),
        ("response phase floor (remove an absent field)", (made["floor"],)),
        ("headers (2 request sets, 1 response set)", (made["headers"],)),
        ("cors (allowed Origin: response fields + Vary)", (made["cors"],)),
        ("ip_filter, 10 networks", (made["ip10"],)),
        ("ip_filter, 10,000 networks", (made["ip10k"],)),
        ("ip_filter (10k) + cors + headers", (made["ip10k"], made["cors"], made["headers"])),
        ("rate_limit (local table, key client_ip)", (made["rate_limit"],)),
        ("rate_limit with RateLimit headers", (made["rate_limit_headers"],)),
    ]
    states = []
    for _, chain in cases:
        state = make_state()
        state.router.match(b"api.example.com", b"GET", PATH)[0].chain = chain
        states.append(state)
    bench_parse.LOOPS, bench_parse.REPEATS = LOOPS, 1
    per_request_ns(BROWSER, states[0])  # warm-up: the first run pays for cold caches
    best = [float("inf")] * len(cases)
    for _ in range(ROUNDS):
        for i, state in enumerate(states):
            best[i] = min(best[i], per_request_ns(BROWSER, state))
    return [(label, ns) for (label, _), ns in zip(cases, best, strict=True)]


def main() -> None:
    rows = results()
    base = rows[0][1]
    print("browser-like GET through DownstreamProtocol, direct route, ns/request")
    for label, ns in rows:
        extra = f"  ({ns - base:+,.0f})" if label != rows[0][0] else ""
        print(f"  {label:<48} {ns:8,.0f}{extra}")


if __name__ == "__main__":
    main()
