"""ip_filter family: allow / deny decisions and the 403 answer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from isekai._core.families import IpFilterPolicy
from isekai.policies import BUILDERS


def ip_filter(allow=(), deny=()):
    return BUILDERS["ip_filter"](SimpleNamespace(allow=tuple(allow), deny=tuple(deny)))


@pytest.mark.parametrize(
    ("allow", "deny", "address", "passes"),
    [
        ((), ("10.0.0.0/8",), "10.1.2.3", False),
        ((), ("10.0.0.0/8",), "11.1.2.3", True),
        ((), ("10.0.0.0/8",), "::ffff:10.1.2.3", False),
        ((), ("10.0.0.0/8",), "unknown", True),  # deny only: unparseable is in no list
        (("10.0.0.0/8",), (), "10.1.2.3", True),
        (("10.0.0.0/8",), (), "11.1.2.3", False),
        (("10.0.0.0/8",), (), "unknown", False),  # an allow list refuses what it cannot match
        (("10.0.0.0/8",), ("10.0.0.5",), "10.0.0.5", False),  # deny wins
        (("10.0.0.0/8",), ("10.0.0.5",), "10.0.0.6", True),
        (("2001:db8::/32",), (), "2001:db8::1", True),
        (("2001:db8::/32",), (), "2001:db9::1", False),
    ],
)
def test_ip_filter_decisions(allow, deny, address, passes):
    assert ip_filter(allow, deny).allows(address) is passes


def test_ip_filter_builder():
    policy = ip_filter(deny=("10.0.0.0/8",))
    assert isinstance(policy, IpFilterPolicy)
    assert policy.allow is None and len(policy.deny) == 1
    assert policy.requests and not policy.responses and policy.type_name == "ip_filter"


def test_ip_filter_answer_is_prebuilt_json_403():
    policy = ip_filter(allow=("10.0.0.0/8",))
    answer = policy.refused
    assert answer.status == 403
    assert json.loads(answer.body) == {
        "success": False,
        "error": "client address not allowed",
        "policy": "ip_filter",
        "request_id": "",  # filled in per request when it is sent
    }
    assert answer.request_id_at == len(answer.body) - 2
    assert ("content-type", "application/json") in [
        (n.decode(), v.decode()) for n, v in answer.headers
    ]
