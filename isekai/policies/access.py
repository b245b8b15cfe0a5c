"""Per-route access rules over verified claims: `Requirement` (the ``require`` setting) and how
roles and scopes are read from claims (`claim_words`).

Shared by the bearer-token families (``jwt``, ``oauth2_introspection``): once a token is known
to be valid, `Requirement.missing` says what it lacks (None: nothing, it passes). ``match:
all`` needs every listed role, scope and claim; ``match: any`` one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Requirement", "claim_words"]


def claim_words(value: Any) -> list[str]:
    """A roles or scopes claim as a list of strings: a list keeps its string items, a string
    is split on spaces (RFC 8693 ``scope``); anything else is no words."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def _claim_matches(value: Any, accepted: tuple[Any, ...]) -> bool:
    # a list-valued claim passes when one of its items is accepted; bool is not a number here
    values = value if isinstance(value, list) else [value]
    for v in values:
        for a in accepted:
            if type(v) is type(a) or (
                isinstance(v, (int, float))
                and isinstance(a, (int, float))
                and not isinstance(v, bool)
                and not isinstance(a, bool)
            ):
                if v == a:
                    return True
    return False


class Requirement:
    """A compiled `isekai.config.access.AccessRequirement`."""

    __slots__ = ("claims", "match_all", "roles", "scopes")

    def __init__(self, config: Any) -> None:
        self.roles = tuple(config.roles)
        self.scopes = tuple(config.scopes)
        self.claims = tuple(config.claims or ())
        self.match_all = config.match == "all"

    def missing(self, roles: list[str], scopes: list[str], claims: Mapping[str, Any]) -> str | None:
        """None when the token passes; else a short text of what it lacks (for the 403)."""
        have_roles, have_scopes = set(roles), set(scopes)
        lacking: list[str] = []
        passed = False
        for role in self.roles:
            if role in have_roles:
                passed = True
            else:
                lacking.append(f"role {role}")
        for scope in self.scopes:
            if scope in have_scopes:
                passed = True
            else:
                lacking.append(f"scope {scope}")
        for name, accepted in self.claims:
            if name in claims and _claim_matches(claims[name], accepted):
                passed = True
            else:
                lacking.append(f"claim {name}")
        if self.match_all:
            return None if not lacking else "missing " + ", ".join(lacking)
        return None if passed else "needs one of: " + ", ".join(lacking)
