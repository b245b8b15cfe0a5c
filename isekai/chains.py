"""Policy chains: the `_core` objects a route's or listener's ``policies`` list becomes.

A `PolicySet` turns configured policies into the `_core` objects a route's chain holds. An
instance is kept for as long as some chain uses it, keyed by what it was built from: a named
policy by (name, type, config), an inline one by (owner, position, type, config). So a reload
or an admin change that leaves a policy's config alone keeps its instance and its state; one
no chain uses any more is ``close()``d.

A chain that holds a credential policy starts with the worker's consumer tally, when there
is one (`isekai.observability.consumer_metrics`): it counts requests per resolved consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from isekai._core.counters import Counters
from isekai._core.policy import CorePolicy, PythonPolicy
from isekai.config.policies import PolicySpec
from isekai.observability.consumer_metrics import identifies

__all__ = ["PolicySet", "as_core"]

log = logging.getLogger("isekai.policy")


def as_core(policy: Any) -> CorePolicy:
    """The `_core` form of a policy object: itself, or wrapped by the Python adapter."""
    return policy if isinstance(policy, CorePolicy) else PythonPolicy(policy)


class PolicySet:
    """The policy instances of one worker, kept across snapshots while some chain uses them.

    ``build(spec)`` makes a policy object from a `PolicySpec` (the families' table).
    """

    def __init__(
        self, counters: Counters, build: Callable[[PolicySpec], Any], tally: Any = None
    ) -> None:
        self.counters = counters
        self.build = build
        # the consumer tally (an object with ``on_complete``), shared by every chain that
        # holds a credential policy; never closed by `release`
        self.tally: CorePolicy | None = None
        if tally is not None:
            self.tally = as_core(tally)
            self.tally.name = self.tally.type_name = "consumer_tally"
        self._by_key: dict[Any, CorePolicy] = {}
        self._keys: dict[int, Any] = {}  # id(instance) -> key
        self._users: dict[int, int] = {}  # id(instance) -> chains holding it

    def __len__(self) -> int:
        return len(self._by_key)

    def instances(self) -> dict[str, CorePolicy]:
        """Live instances by policy name (inline ones as ``routes.<route>.policies[<i>]``)."""
        return {policy.name: policy for policy in self._by_key.values()}

    def chain(
        self, items: Iterable[str | PolicySpec], owner: str, named: Mapping[str, PolicySpec]
    ) -> tuple[CorePolicy, ...]:
        """The instances for one route's or listener's ``policies`` list (validated: every
        name exists). ``owner`` names inline items: ``routes.api``, ``listeners.public``.
        Each instance returned is held until `release` is given the chain."""
        policies = []
        credentials = False
        for i, item in enumerate(items):
            if isinstance(item, str):
                spec = named[item]
                key: Any = ("named", item, spec.type, _config_key(spec))
                name = item
            else:
                spec = item
                name = f"{owner}.policies[{i}]"
                key = ("inline", name, spec.type, _config_key(spec))
            policy = self._by_key.get(key)
            if policy is None:
                policy = as_core(self.build(spec))
                policy.name = name
                policy.type_name = spec.type
                policy.deadline = spec.deadline
                policy.slot = self.counters.policy_slot(name)
                self._by_key[key] = policy
                self._keys[id(policy)] = key
                self._users[id(policy)] = 0
            self._users[id(policy)] += 1
            policies.append(policy)
            credentials = credentials or identifies(spec)
        if credentials and self.tally is not None:
            # first: the complete phase reaches it even when a policy answers (401s count)
            policies.insert(0, self.tally)
        return tuple(policies)

    def release(self, chain: Iterable[CorePolicy]) -> None:
        """A chain made by `chain` is no longer used; instances nothing holds are closed."""
        for policy in chain:
            count = self._users.get(id(policy))
            if count is None:
                continue
            if count > 1:
                self._users[id(policy)] = count - 1
                continue
            del self._users[id(policy)]
            del self._by_key[self._keys.pop(id(policy))]
            try:
                policy.close()
            except Exception:
                log.exception("policy %s failed to close", policy.name)

    def close(self) -> None:
        """Close every instance (the worker is stopping)."""
        for policy in list(self._by_key.values()):
            self._users[id(policy)] = 1
            self.release((policy,))


def _config_key(spec: PolicySpec) -> Any:
    # the family config is a frozen dataclass: hashable when its fields are; else its repr
    try:
        hash(spec.options)
    except TypeError:
        return (repr(spec.options), spec.deadline)
    return (spec.options, spec.deadline)
