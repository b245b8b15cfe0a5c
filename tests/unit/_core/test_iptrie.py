"""IpSet: unit cases per rule, plus a differential property test against `ipaddress`."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isekai._core.iptrie as iptrie_mod
from isekai._core.iptrie import IpSet


def test_iptrie_module_is_compiled():
    assert iptrie_mod.__file__.endswith(".so")


def test_iptrie_ipv4_prefixes():
    s = IpSet(["10.0.0.0/8", "192.168.1.0/24"])
    assert s.contains("10.0.0.0") and s.contains("10.255.255.255")
    assert s.contains(b"192.168.1.77")
    assert not s.contains("11.0.0.0")
    assert not s.contains("9.255.255.255")
    assert not s.contains("192.168.2.1")
    assert len(s) == 2


def test_iptrie_ipv4_host_route_32():
    s = IpSet(["203.0.113.7/32", "198.51.100.1"])  # a bare address is a /32
    assert s.contains("203.0.113.7") and s.contains("198.51.100.1")
    assert not s.contains("203.0.113.6") and not s.contains("203.0.113.8")
    assert list(s) == ["203.0.113.7/32", "198.51.100.1/32"]


def test_iptrie_ipv6_prefixes_and_128():
    s = IpSet(["2001:db8::/32", "fe80::1/128"])
    assert s.contains("2001:db8::1") and s.contains("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
    assert not s.contains("2001:db9::")
    assert s.contains("fe80::1") and s.contains("FE80:0:0:0:0:0:0:1")
    assert not s.contains("fe80::2")
    assert not s.contains("10.0.0.1")


def test_iptrie_zero_prefix_per_family():
    v4 = IpSet(["0.0.0.0/0"])
    assert v4.contains("1.2.3.4") and v4.contains("255.255.255.255")
    assert v4.contains("::ffff:1.2.3.4")  # mapped: IPv4
    assert not v4.contains("::1")
    v6 = IpSet(["::/0"])
    assert v6.contains("::1") and v6.contains("2001:db8::5")
    assert not v6.contains("1.2.3.4")  # an IPv6 network never holds an IPv4 address
    assert not v6.contains("::ffff:1.2.3.4")


def test_iptrie_ipv4_mapped_addresses_and_networks():
    s = IpSet(["10.0.0.0/8"])
    assert s.contains("::ffff:10.1.2.3") and s.contains("::ffff:a01:203")
    assert not s.contains("::ffff:11.1.2.3")
    assert not s.contains("::10.1.2.3")  # IPv4-compatible (deprecated) is plain IPv6
    mapped = IpSet(["::ffff:192.168.0.0/112"])  # a mapped network is an IPv4 one
    assert list(mapped) == ["192.168.0.0/16"]
    assert mapped.contains("192.168.4.4") and mapped.contains("::ffff:192.168.4.4")
    assert not mapped.contains("192.169.0.1")


def test_iptrie_overlapping_prefixes():
    s = IpSet(["10.1.2.0/24", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32"])
    for address in ("10.1.2.3", "10.1.2.4", "10.1.3.1", "10.200.0.1"):
        assert s.contains(address)
    assert not s.contains("11.1.2.3")
    # narrower after wider changes nothing, wider after narrower covers the narrower
    t = IpSet(["10.1.2.3/32", "10.1.2.0/24"])
    assert t.contains("10.1.2.200") and not t.contains("10.1.3.0")


def test_iptrie_host_bits_are_ignored():
    s = IpSet(["10.1.2.3/8"])
    assert list(s) == ["10.0.0.0/8"] and s.contains("10.9.9.9")


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"unknown",
        b"10.0.0",
        b"10.0.0.1.",
        b"10.0.0.256",
        b"010.0.0.1",
        b" 10.0.0.1",
        b"10.0.0.1 ",
        b"10.0.0.1\x00",
        b"[::1]",
        b"::1%eth0",
        b"::ffff:10.0.0.1:",
        b"1::2::3",
        b"a" * 200,
        "10.0.0.1\u00e9",
        None,
        42,
    ],
)
def test_iptrie_garbage_matches_nothing(garbage):
    s = IpSet(["0.0.0.0/0", "::/0"])
    assert not s.contains(garbage)


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "nope", "::/129", "", "10.0.0.0/-1"])
def test_iptrie_invalid_network_raises(bad):
    with pytest.raises(ValueError):
        IpSet([bad])


def test_iptrie_empty_set():
    s = IpSet()
    assert not s and len(s) == 0
    assert not s.contains("1.2.3.4") and not s.contains("::1")
    assert "10.0.0.1" not in s


def test_iptrie_in_operator_and_repr():
    s = IpSet(["10.0.0.0/8"])
    assert "10.0.0.1" in s
    assert "10.0.0.0/8" in repr(s)


def test_iptrie_ten_thousand_networks():
    nets = [f"10.{i // 256}.{i % 256}.0/24" for i in range(10_000)]
    s = IpSet(nets)
    assert len(s) == 10_000
    assert s.contains("10.0.0.1") and s.contains("10.39.15.200")
    assert not s.contains("10.39.16.1")
    assert not s.contains("11.0.0.1")


# -- differential: IpSet against ipaddress ------------------------------------------------------


def _reference(networks, address: str) -> bool:
    addr = ipaddress.ip_address(address)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for net in networks:
        if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
            net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
        if net.version == addr.version and addr in net:
            return True
    return False


v4_nets = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_nets = st.builds(
    lambda a, p: ipaddress.IPv6Network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
mapped_nets = st.builds(
    lambda a, p: ipaddress.IPv6Network(((0xFFFF << 32) | a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(96, 128),
)
networks = st.lists(
    st.one_of(v4_nets, v4_nets.filter(lambda n: n.prefixlen >= 8), v6_nets, mapped_nets),
    max_size=24,
)


def _near(net, offset: int):
    """An address at `offset` from the network's start, inside or just outside it."""
    size = 32 if net.version == 4 else 128
    value = (int(net.network_address) + offset) % (2**size)
    return ipaddress.ip_address(value) if size == 32 else ipaddress.IPv6Address(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks, st.data())
def test_iptrie_matches_ipaddress(nets, data):
    s = IpSet([str(n) for n in nets])
    probes = data.draw(
        st.lists(
            st.one_of(
                st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v))),
                st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v))),
                st.integers(0, 2**32 - 1).map(
                    lambda v: str(ipaddress.IPv6Address((0xFFFF << 32) | v))
                ),
            ),
            max_size=16,
        )
    )
    for net in nets:
        for offset in (-1, 0, 1, net.num_addresses - 1, net.num_addresses):
            probes.append(str(_near(net, offset)))
    for address in probes:
        assert s.contains(address) == _reference(nets, address), (address, nets)
        assert s.contains(address.encode()) == _reference(nets, address)
