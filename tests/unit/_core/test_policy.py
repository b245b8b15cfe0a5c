"""`_core.policy`: the response head policies edit, answers, and field checks."""

from __future__ import annotations

import pytest

from isekai._core.policy import Answer, ResponseHead


def head(*pairs, status=200):
    parts = []
    for name, value in pairs:
        parts += [name, b": ", value, b"\r\n"]
    return ResponseHead(status, parts)


def test_policy_response_head_reads_any_case():
    h = head((b"Content-Type", b"text/plain"), (b"X-A", b"1"), (b"x-a", b"2"))
    assert h.header("content-type") == "text/plain"
    assert h.header("X-A") == "1"
    assert h.header("missing") is None


def test_policy_response_head_set_replaces_every_field():
    h = head((b"X-A", b"1"), (b"Server", b"up"), (b"x-a", b"2"))
    h.set_header("x-A", "3")
    assert h.headers() == [("Server", "up"), ("x-A", "3")]


def test_policy_response_head_add_and_remove():
    h = head((b"Vary", b"Accept"))
    h.add_header("Vary", "Origin")
    assert h.headers() == [("Vary", "Accept"), ("Vary", "Origin")]
    h.remove_header("VARY")
    assert h.headers() == []
    h.remove_header("absent")  # removing what is not there is fine
    assert h.headers() == []


def test_policy_response_head_status_is_final_only():
    h = head()
    h.status = 418
    assert h.status == 418
    for bad in (101, 199, 600):
        with pytest.raises(ValueError, match="final status"):
            h.status = bad
    with pytest.raises(AttributeError):
        h.other = 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-A", "a\r\nInjected: 1"),
        ("X-A", "a\nb"),
        ("X-A", "nul\0"),
        ("X A", "v"),
        ("X:A", "v"),
        ("", "v"),
        ("X-A\r\n", "v"),
    ],
)
def test_policy_response_head_refuses_fields_that_break_the_head(name, value):
    h = head()
    with pytest.raises(ValueError, match="invalid"):
        h.set_header(name, value)
    with pytest.raises(ValueError, match="invalid"):
        h.add_header(name, value)
    assert h.headers() == []


def test_policy_answer_is_a_final_response():
    answer = Answer(403, (("content-type", "application/json"),), b"{}")
    assert (answer.status, answer.headers, answer.body) == (
        403,
        (("content-type", "application/json"),),
        b"{}",
    )
    with pytest.raises(ValueError, match="final status"):
        Answer(100)
