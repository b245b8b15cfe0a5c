"""Shared fixtures: real upstream servers and real gateway processes, all on 127.0.0.1 port 0."""

from __future__ import annotations

import textwrap

import pytest

from tests.support.gateway import Gateway
from tests.support.upstream import Upstream


@pytest.fixture
def upstream():
    with Upstream() as up:
        yield up


@pytest.fixture
def start_gateway(tmp_path):
    """Call with YAML text (dedented); returns a running `Gateway`, stopped after the test."""
    started: list[Gateway] = []

    def start(yaml_text: str, name: str = "gateway.yaml") -> Gateway:
        path = tmp_path / name
        path.write_text(textwrap.dedent(yaml_text))
        gw = Gateway(path)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
