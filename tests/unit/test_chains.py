"""PolicySet: a policy instance lives while some chain holds it, keyed by what it was built
from; an unchanged policy keeps its instance (and state) across rebuilt chains, a dropped one is
closed once."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from isekai._core.counters import Counters
from isekai._core.policy import CorePolicy, PythonPolicy
from isekai.chains import PolicySet, as_core
from isekai.config.policies import PolicySpec


@dataclass(frozen=True)
class Options:
    value: int = 0


class Counting:
    def __init__(self, options):
        self.options = options
        self.closed = 0

    def on_request(self, req):
        return None

    def close(self):
        self.closed += 1


@pytest.fixture
def made():
    return []


@pytest.fixture
def policies(made):
    def build(spec):
        policy = Counting(spec.options)
        made.append(policy)
        return policy

    return PolicySet(Counters(), build)


def spec(value=0, deadline=10.0):
    return PolicySpec("counting", Options(value), deadline=deadline)


def test_chains_named_policy_shared_and_kept_while_unchanged(policies, made):
    named = {"a": spec(1)}
    first = policies.chain(["a"], "routes.r1", named)
    second = policies.chain(["a"], "routes.r2", named)
    assert first[0] is second[0] and len(made) == 1
    assert first[0].name == "a" and first[0].type_name == "counting"
    again = policies.chain(["a"], "routes.r1", {"a": spec(1)})  # an equal config, rebuilt
    policies.release(first)
    assert again[0] is second[0] and made[0].closed == 0
    policies.release(second)
    policies.release(again)
    assert made[0].closed == 1 and len(policies) == 0


def test_chains_changed_config_makes_a_new_instance_and_closes_the_old(policies, made):
    old = policies.chain(["a"], "routes.r", {"a": spec(1)})
    new = policies.chain(["a"], "routes.r", {"a": spec(2)})
    policies.release(old)
    assert new[0] is not old[0]
    assert [p.closed for p in made] == [1, 0]
    changed_deadline = policies.chain(["a"], "routes.r", {"a": spec(2, deadline=1.0)})
    assert changed_deadline[0] is not new[0] and changed_deadline[0].deadline == 1.0


def test_chains_inline_policies_are_per_owner_and_position(policies, made):
    inline = spec(5)
    r1 = policies.chain([inline, inline], "routes.r1", {})
    r2 = policies.chain([inline], "routes.r2", {})
    assert len({id(p) for p in (*r1, *r2)}) == 3
    assert [p.name for p in r1] == ["routes.r1.policies[0]", "routes.r1.policies[1]"]
    kept = policies.chain([inline, inline], "routes.r1", {})
    assert kept == r1


def test_chains_counter_slots_per_policy_name(policies):
    counters = policies.counters
    chain = policies.chain(["a", spec(3)], "listeners.public", {"a": spec(1)})
    assert chain[0].slot == counters.policy_slot("a")
    assert chain[1].slot == counters.policy_slot("listeners.public.policies[1]")
    assert set(counters.snapshot()["policies"]) == {"a", "listeners.public.policies[1]"}


def test_chains_close_closes_everything_once(policies, made):
    policies.chain(["a", spec(9)], "routes.r", {"a": spec(1)})
    policies.chain(["a"], "routes.q", {"a": spec(1)})
    policies.close()
    assert [p.closed for p in made] == [1, 1] and len(policies) == 0


def test_chains_close_failure_is_logged_not_raised(policies, made, caplog):
    chain = policies.chain(["a"], "routes.r", {"a": spec(1)})

    def broken():
        raise RuntimeError("close bug")

    made[0].close = broken
    policies.release(chain)
    assert "policy a failed to close" in caplog.text


def test_chains_as_core_wraps_python_and_keeps_core_policies():
    core = CorePolicy()
    assert as_core(core) is core
    wrapped = as_core(Counting(None))
    assert isinstance(wrapped, PythonPolicy)
    assert wrapped.requests and not wrapped.responses and not wrapped.is_async


def test_chains_python_adapter_finds_phases_and_refuses_async_response_phases():
    class Async:
        async def on_request(self, req):
            return None

        def on_complete(self, req):
            pass

    adapted = PythonPolicy(Async())
    assert adapted.is_async and adapted.completes and not adapted.responses

    class Bad:
        async def on_response(self, req, head):
            pass

    with pytest.raises(TypeError, match="on_response must not be async"):
        PythonPolicy(Bad())
