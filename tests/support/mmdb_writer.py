"""A small MaxMind DB (``.mmdb``) writer, so tests make their own GeoIP databases.

The format (MaxMind DB 2.0): a binary search tree over the bits of an IPv6 address, each node
two records of ``record_size`` bits (24, 28 or 32); a record is a node number, ``node_count``
("nothing here") or a pointer into the data section (``node_count + 16 + offset``). The tree
is followed by 16 zero bytes, the data section, then ``\\xab\\xcd\\xefMaxMind.com`` and the
metadata map. IPv4 networks live in the IPv4-compatible subtree ``::/96``, where readers
look them up. Data values written: maps, UTF-8 strings, unsigned integers, booleans,
doubles and arrays — what a country database holds.

    writer = MmdbWriter(database_type="GeoLite2-Country")
    writer.insert("203.0.113.0/24", {"country": {"iso_code": "XX"}})
    writer.write(path)
"""

from __future__ import annotations

import ipaddress
import json
import struct
import time
from pathlib import Path
from typing import Any

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
_POINTER, _STRING, _DOUBLE, _BYTES, _UINT16, _UINT32, _MAP = 1, 2, 3, 4, 5, 6, 7
_UINT64, _ARRAY, _BOOLEAN = 9, 11, 14


def _control(kind: int, size: int) -> bytes:
    """The control byte(s) of a field: type in the top 3 bits (or an extended type byte),
    size in the low 5 bits plus 0-3 size bytes."""
    if size < 29:
        head, extra = size, b""
    elif size < 285:
        head, extra = 29, bytes([size - 29])
    elif size < 65821:
        head, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        head, extra = 31, (size - 65821).to_bytes(3, "big")
    if kind <= 7:
        return bytes([(kind << 5) | head]) + extra
    return bytes([head, kind - 7]) + extra


class Uint(int):
    """An unsigned integer written as a given type (16, 32 or 64 bits): the metadata's fields
    have fixed types (readers such as libmaxminddb check them)."""

    bits = 0

    def __new__(cls, value: int, bits: int) -> Uint:
        self = super().__new__(cls, value)
        self.bits = bits
        return self


def encode(value: Any) -> bytes:
    """``value`` in the MaxMind DB data section encoding."""
    if isinstance(value, bool):
        return _control(_BOOLEAN, int(value))
    if isinstance(value, str):
        data = value.encode()
        return _control(_STRING, len(data)) + data
    if isinstance(value, bytes):
        return _control(_BYTES, len(value)) + value
    if isinstance(value, float):
        return bytes([(_DOUBLE << 5) | 8]) + struct.pack(">d", value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError("only unsigned integers are written")
        data = value.to_bytes((value.bit_length() + 7) // 8, "big")
        bits = value.bits if isinstance(value, Uint) else value.bit_length()
        kind = _UINT16 if bits <= 16 else _UINT32 if bits <= 32 else _UINT64
        return _control(kind, len(data)) + data
    if isinstance(value, dict):
        out = _control(_MAP, len(value))
        for key, item in value.items():
            out += encode(str(key)) + encode(item)
        return out
    if isinstance(value, (list, tuple)):
        return _control(_ARRAY, len(value)) + b"".join(encode(item) for item in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


class _Node:
    __slots__ = ("number", "records")

    def __init__(self) -> None:
        # each record: None (empty), a _Node, or ("data", offset)
        self.records: list[Any] = [None, None]
        self.number = 0


class MmdbWriter:
    """An IPv6 database (IPv4 networks in ``::/96``) of networks mapped to data records."""

    def __init__(
        self, database_type: str = "GeoLite2-Country", record_size: int = 24, **description: str
    ) -> None:
        if record_size not in (24, 28, 32):
            raise ValueError("record_size is 24, 28 or 32")
        self.database_type = database_type
        self.record_size = record_size
        self.description = description or {"en": "isekai test database"}
        self.root = _Node()
        self.data = bytearray()
        self._offsets: dict[str, int] = {}

    def _store(self, record: Any) -> tuple[str, int]:
        key = json.dumps(record, sort_keys=True)
        if key not in self._offsets:
            self._offsets[key] = len(self.data)
            self.data += encode(record)
        return ("data", self._offsets[key])

    def insert(self, network: str, record: Any) -> None:
        """Map ``network`` (``"203.0.113.0/24"``, ``"2001:db8::/32"``, an address) to
        ``record``; a network inside one inserted before takes its part of it."""
        net = ipaddress.ip_network(network, strict=True)
        bits, prefix = int(net.network_address), net.prefixlen
        if net.version == 4:  # IPv4 lives at ::a.b.c.d (the first 96 bits zero)
            prefix += 96
        leaf = self._store(record)
        node = self.root
        for depth in range(prefix):
            bit = (bits >> (127 - depth)) & 1
            if depth == prefix - 1:
                node.records[bit] = leaf
                return
            nxt = node.records[bit]
            if not isinstance(nxt, _Node):  # empty, or data a more specific network splits
                child = _Node()
                child.records = [nxt, nxt]
                node.records[bit] = nxt = child
            node = nxt
        raise ValueError("a /0 network cannot be inserted")

    def _nodes(self) -> list[_Node]:
        order, queue = [], [self.root]
        while queue:
            node = queue.pop(0)
            node.number = len(order)
            order.append(node)
            queue.extend(r for r in node.records if isinstance(r, _Node))
        return order

    def _pack(self, left: int, right: int) -> bytes:
        if self.record_size == 24:
            return left.to_bytes(3, "big") + right.to_bytes(3, "big")
        if self.record_size == 28:
            middle = ((left >> 24) << 4) | (right >> 24)
            return (
                (left & 0xFFFFFF).to_bytes(3, "big")
                + bytes([middle])
                + (right & 0xFFFFFF).to_bytes(3, "big")
            )
        return left.to_bytes(4, "big") + right.to_bytes(4, "big")

    def build(self) -> bytes:
        """The whole database file."""
        nodes = self._nodes()
        count = len(nodes)

        def value(record: Any) -> int:
            if record is None:
                return count
            if isinstance(record, _Node):
                return record.number
            return count + 16 + record[1]

        if count + 16 + len(self.data) >= 1 << self.record_size:
            raise ValueError(f"too large for {self.record_size}-bit records")
        tree = b"".join(self._pack(value(n.records[0]), value(n.records[1])) for n in nodes)
        metadata = {
            "node_count": Uint(count, 32),
            "record_size": Uint(self.record_size, 16),
            "ip_version": Uint(6, 16),
            "database_type": self.database_type,
            "languages": ["en"],
            "binary_format_major_version": Uint(2, 16),
            "binary_format_minor_version": Uint(0, 16),
            "build_epoch": Uint(int(time.time()), 64),
            "description": self.description,
        }
        return tree + bytes(16) + bytes(self.data) + METADATA_MARKER + encode(metadata)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.build())
        return path


def country_database(path: str | Path, networks: dict[str, str], record_size: int = 24) -> Path:
    """A GeoLite2-Country-shaped database: network -> ISO code (``{"country": {"iso_code":
    ..., "names": {"en": ...}}}``, as MaxMind's)."""
    writer = MmdbWriter("GeoLite2-Country", record_size)
    for network, code in networks.items():
        writer.insert(network, {"country": {"iso_code": code, "names": {"en": f"Land {code}"}}})
    return writer.write(path)
