"""TEMPORARY stub until the config branch lands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_REGISTERED: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class PolicySpec:
    type: str
    options: Any
    name: str | None = None
    deadline: float = 10.0


def register_family(family: Any) -> None:
    _REGISTERED[family.type] = family


def plugin_family(type_name: str) -> Any:
    return _REGISTERED.get(type_name)
