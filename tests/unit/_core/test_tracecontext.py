"""W3C trace context in `_core`: the traceparent grammar (against a small reference written
from the spec), the ratio sampling rule, ids, and the line sent upstream."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isekai._core import tracecontext as tc

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LOWER_HEX = re.compile(rb"[0-9a-f]+")


def reference(value: bytes):
    """W3C trace context §3.2, as plainly as it reads: None when invalid."""
    parts = value.split(b"-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[:4]
    if len(version) != 2 or not LOWER_HEX.fullmatch(version) or version == b"ff":
        return None
    if version == b"00" and len(parts) != 4:
        return None
    if len(trace_id) != 32 or not LOWER_HEX.fullmatch(trace_id) or set(trace_id) == {48}:
        return None
    if len(parent_id) != 16 or not LOWER_HEX.fullmatch(parent_id) or set(parent_id) == {48}:
        return None
    if len(flags) != 2 or not LOWER_HEX.fullmatch(flags):
        return None
    return int(version, 16), trace_id, parent_id, int(flags, 16)


hexdigits = st.sampled_from(b"0123456789abcdef")
near_hex = st.sampled_from(b"0123456789abcdefABCDEF-gz ")


def fields(n: int, alphabet=hexdigits):
    return st.lists(alphabet, min_size=n, max_size=n).map(bytes)


@st.composite
def traceparents(draw):
    """Mostly well-formed values, with one part bent now and then."""
    version = draw(st.one_of(st.just(b"00"), fields(2), fields(2, near_hex)))
    trace_id = draw(st.one_of(fields(32), st.just(b"0" * 32), fields(32, near_hex)))
    parent_id = draw(st.one_of(fields(16), st.just(b"0" * 16), fields(16, near_hex)))
    flags = draw(st.one_of(fields(2), fields(2, near_hex), fields(1), fields(3)))
    tail = draw(st.one_of(st.just(b""), st.just(b"-"), st.just(b"-xyz"), st.just(b"x")))
    value = b"-".join((version, trace_id, parent_id, flags)) + tail
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(value)))
        value = value[:cut]
    return value


@settings(max_examples=1000)
@given(traceparents())
def test_tracecontext_parse_agrees_with_reference(value):
    assert tc.parse(value) == reference(value)


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_tracecontext_parse_agrees_with_reference_on_any_bytes(value):
    assert tc.parse(value) == reference(value)


@pytest.mark.parametrize(
    "value",
    [
        VALID.upper(),  # hex is lower-case
        b"ff" + VALID[2:],  # version ff is invalid
        b"00-" + b"0" * 32 + VALID[35:],  # all-zero trace id
        VALID[:36] + b"0" * 16 + VALID[52:],  # all-zero parent id
        VALID + b"-extra",  # version 00 is exactly 55 characters
        VALID[:-1],
        VALID.replace(b"-", b"_"),
        b"",
        b" " + VALID,
    ],
)
def test_tracecontext_parse_rejects(value):
    assert tc.parse(value) is None


def test_tracecontext_parse_accepts_valid_and_later_versions():
    assert tc.parse(VALID) == (0, VALID[3:35], VALID[36:52], 1)
    assert tc.parse(b"01" + VALID[2:] + b"-what-comes-later") == (1, VALID[3:35], VALID[36:52], 1)
    assert tc.parse(b"01" + VALID[2:] + b"x") is None  # a later version's extra part follows "-"


@settings(max_examples=500)
@given(st.integers(0, 2**128 - 1).filter(bool), st.floats(0, 1))
def test_tracecontext_ratio_sampling_is_trace_id_ratio_based(trace_id, ratio):
    # OpenTelemetry's TraceIdRatioBased: lower 64 bits below round(ratio * 2**64)
    expected = (trace_id & (2**64 - 1)) < round(ratio * 2**64)
    assert tc.sampled(b"%032x" % trace_id, ratio) == expected


def test_tracecontext_ratio_edges():
    assert tc.sampled(b"f" * 32, 1.0)
    assert not tc.sampled(b"0" * 31 + b"1", 0.0)
    share = sum(tc.sampled(tc.trace_id(), 0.25) for _ in range(4000)) / 4000
    assert 0.2 < share < 0.3


def test_tracecontext_ids_are_valid_and_distinct():
    traces = {tc.trace_id() for _ in range(1000)}
    spans = {tc.span_id() for _ in range(1000)}
    assert len(traces) == 1000 and len(spans) == 1000
    for trace_id in traces:
        assert tc.parse(b"00-" + trace_id + b"-00f067aa0ba902b7-00") is not None
    for span_id in spans:
        assert tc.parse(b"00-" + VALID[3:35] + b"-" + span_id + b"-00") is not None


def test_tracecontext_seed_fixes_the_sequence():
    tc.seed(b"\x01" * 32)
    first = [tc.trace_id() for _ in range(3)]
    tc.seed(b"\x01" * 32)
    assert [tc.trace_id() for _ in range(3)] == first
    tc.seed(b"\x00" * 32)  # any seed gives a well-mixed state
    assert len({tc.span_id() for _ in range(10)}) == 10
    tc.seed()
    with pytest.raises(ValueError):
        tc.seed(b"short")


def test_tracecontext_forked_children_draw_their_own_ids():
    tc.seed(b"\x02" * 32)  # parent and children start from the same state at fork
    ids = []
    for _ in range(2):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read)
            os.write(write, tc.trace_id())
            os._exit(0)
        os.close(write)
        ids.append(os.read(read, 64))
        os.close(read)
        os.waitpid(pid, 0)
    ids.append(tc.trace_id())
    tc.seed()
    assert len(set(ids)) == 3


def test_tracecontext_header_line():
    line = tc.header_line(VALID[3:35], VALID[36:52], True)
    assert line == b"traceparent: " + VALID + b"\r\n"
    assert tc.header_line(VALID[3:35], VALID[36:52], False).endswith(b"-00\r\n")
    fresh = tc.header_line(VALID[3:35], None, False)  # a new span id, written in place
    assert fresh.startswith(b"traceparent: ") and fresh.endswith(b"\r\n")
    parsed = tc.parse(fresh[13:-2])
    assert parsed is not None and parsed[1] == VALID[3:35] and parsed[3] == 0
    with pytest.raises(ValueError):
        tc.header_line(b"abc", VALID[36:52], True)
