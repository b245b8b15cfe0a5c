"""Micro-benchmark: IpSet lookups (the ip_filter policy's trie) with 10 and 10,000 networks.

Run after building the extension:  PYTHONPATH=. python bench/micro/bench_iptrie.py
Two rows per case: `contains()` called from Python (call overhead included), and the same lookups
run in one C loop (`IpSet.count`), which is what the policy pays per request. Best of REPEATS runs.
"""

from __future__ import annotations

import ipaddress
import random
import time

from isekai._core.iptrie import IpSet

LOOPS = 200_000
REPEATS = 5


def networks(count: int, rng: random.Random) -> list[str]:
    """`count` distinct networks: mostly IPv4 /16-/32, a fifth IPv6 /32-/128."""
    out: set[str] = set()
    while len(out) < count:
        if rng.random() < 0.8:
            prefix = rng.choice((16, 20, 24, 24, 28, 32, 32))
            net = ipaddress.IPv4Network((rng.getrandbits(32), prefix), strict=False)
        else:
            prefix = rng.choice((32, 48, 64, 64, 128))
            net = ipaddress.IPv6Network((rng.getrandbits(128), prefix), strict=False)
        out.add(str(net))
    return sorted(out)


def probes(nets: list[str], rng: random.Random, hit: bool) -> list[bytes]:
    out = []
    while len(out) < 256:
        net = ipaddress.ip_network(rng.choice(nets))
        if hit:
            value = int(net.network_address) + rng.randrange(net.num_addresses)
            out.append(str(ipaddress.ip_address(value)).encode())
        else:
            size = 32 if net.version == 4 else 128
            value = rng.getrandbits(size)
            addr = ipaddress.IPv4Address(value) if size == 32 else ipaddress.IPv6Address(value)
            out.append(str(addr).encode())
    return out


def time_python(s: IpSet, addrs: list[bytes]) -> float:
    n = len(addrs)
    contains = s.contains
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for i in range(LOOPS):
            contains(addrs[i % n])
        best = min(best, (time.perf_counter_ns() - start) / LOOPS)
    return best


def time_c(s: IpSet, addrs: list[bytes]) -> float:
    rounds = LOOPS // len(addrs)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        s.count(addrs, rounds)
        best = min(best, (time.perf_counter_ns() - start) / (rounds * len(addrs)))
    return best


def results() -> list[tuple[str, str, float]]:
    """(set, case, ns per lookup). The 10,000-network set holds the 10 networks of the small
    one plus 9,990 others, and both are probed with the same addresses: the only difference
    between the rows is the size of the trie."""
    rng = random.Random(7)
    small = networks(10, rng)
    big = sorted(set(small) | set(networks(9_990, rng)))
    while len(big) < 10_000:
        big = sorted(set(big) | set(networks(10_000 - len(big), rng)))
    hits = probes(small, rng, True)
    v4_hits = [a for a in hits if b":" not in a] or hits
    misses = probes(small, rng, False)
    v4_misses = [str(ipaddress.IPv4Address(rng.getrandbits(32))).encode() for _ in range(256)]
    cases = (
        ("hit (IPv4 and IPv6 inside the 10)", hits),
        ("hit IPv4", v4_hits),
        ("miss (random IPv4 and IPv6)", misses),
        ("miss IPv4", v4_misses),
        ("garbage (b'unknown')", [b"unknown"]),
    )
    rows = []
    for label, nets in (("10 networks", small), ("10,000 networks", big)):
        s = IpSet(nets)
        for case, addrs in cases:
            rows.append((label, f"{case}, C loop", time_c(s, addrs)))
            rows.append((label, f"{case}, contains() from Python", time_python(s, addrs)))
    return rows


def main() -> None:
    print(f"IpSet lookups, best of {REPEATS} x {LOOPS:,}")
    table = None
    for name, case, ns in results():
        if name != table:
            print(name)
        table = name
        print(f"  {case:<48} {ns:8.1f} ns/lookup")


if __name__ == "__main__":
    main()
