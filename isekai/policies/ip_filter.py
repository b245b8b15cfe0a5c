"""The ``ip_filter`` family: allow or deny clients by address (`IpFilterConfig`)."""

from __future__ import annotations

from typing import Any

from isekai._core.families import IpFilterPolicy
from isekai._core.iptrie import IpSet


def build(config: Any, env: Any = None) -> IpFilterPolicy:
    """An `IpFilterPolicy` from an `IpFilterConfig`: deny wins; with `allow`, only it passes."""
    allow = IpSet(config.allow) if config.allow else None
    deny = IpSet(config.deny) if config.deny else None
    return IpFilterPolicy(allow, deny)
