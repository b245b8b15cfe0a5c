"""The per-consumer tally: bounded by the configured consumers and by `MAX_SERIES`, and put
only at the head of chains that hold a credential policy."""

from __future__ import annotations

from dataclasses import dataclass, field

from isekai._core.counters import Counters
from isekai.chains import PolicySet
from isekai.config.consumers import Consumer, IdentityHeaders
from isekai.config.policies import PolicySpec
from isekai.observability import consumer_metrics
from isekai.observability.consumer_metrics import OTHER, ConsumerTally, identifies
from isekai.policies.environment import ConsumerDirectory


class FakeRequest:
    """What the tally reads: `label_values` as `_core` answers it (ctx consumer, route,
    status class)."""

    def __init__(self, consumer: str, route: str = "api", status_class: str = "2xx") -> None:
        self.values = (consumer, route, status_class)

    def label_values(self, sources):
        assert sources == ((2, "consumer"), (3, None), (6, None))
        return self.values


def directory(*names: str) -> ConsumerDirectory:
    found = ConsumerDirectory()
    found.update(Consumer(name) for name in names)
    return found


def test_tally_counts_configured_consumers_by_name_and_the_rest_as_anonymous():
    tally = ConsumerTally(directory("acme"))
    for consumer in ("acme", "acme", "", "sub-from-a-token"):
        tally.on_complete(FakeRequest(consumer))
    tally.on_complete(FakeRequest("acme", status_class="4xx"))
    assert sorted(tally.stats()) == [
        ["", "api", "2xx", 2],
        ["acme", "api", "2xx", 2],
        ["acme", "api", "4xx", 1],
    ]


def test_tally_counts_a_request_once_when_two_chains_hold_it():
    tally = ConsumerTally(directory("acme"))
    request = FakeRequest("acme")
    tally.on_complete(request)  # the listener's chain
    tally.on_complete(request)  # the route's chain
    assert tally.stats() == [["acme", "api", "2xx", 1]]


def test_tally_folds_label_sets_past_the_cap(monkeypatch):
    monkeypatch.setattr(consumer_metrics, "MAX_SERIES", 2)
    tally = ConsumerTally(directory("acme"))
    for route in ("a", "b", "c", "d"):
        tally.on_complete(FakeRequest("acme", route))
    tally.on_complete(FakeRequest("acme", "a"))
    assert sorted(tally.stats()) == [
        [OTHER, OTHER, "2xx", 2],
        ["acme", "a", "2xx", 2],
        ["acme", "b", "2xx", 1],
    ]


@dataclass(frozen=True)
class CredentialConfig:
    upstream_headers: IdentityHeaders = field(default_factory=IdentityHeaders)


@dataclass(frozen=True)
class PlainConfig:
    value: int = 1


class Nothing:
    def on_request(self, req):
        return None


def test_the_tally_heads_only_chains_with_a_credential_policy():
    credential = PolicySpec("cred", CredentialConfig(), "cred")
    plain = PolicySpec("plain", PlainConfig(), "plain")
    assert identifies(credential) and not identifies(plain)
    tally = ConsumerTally(directory())
    policies = PolicySet(Counters(), lambda spec: Nothing(), tally)
    named = {"cred": credential, "plain": plain}
    with_credentials = policies.chain(["plain", "cred"], "routes.a", named)
    assert len(with_credentials) == 3 and with_credentials[0] is policies.tally
    assert policies.tally.completes and not policies.tally.requests
    without = policies.chain(["plain"], "routes.b", named)
    assert len(without) == 1 and policies.tally not in without
    policies.release(with_credentials)  # the tally is never closed or counted as a policy
    assert len(policies) == 1
    # a policy set without a tally (tests, tools) makes chains as they are
    assert len(PolicySet(Counters(), lambda spec: Nothing()).chain(["cred"], "r", named)) == 1
