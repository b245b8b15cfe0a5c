"""Shared fixtures: real upstream servers and real gateway processes, all on 127.0.0.1 port 0."""

from __future__ import annotations

import re
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
        text = textwrap.dedent(yaml_text)
        if not re.search(r"^admin:", text, re.M):
            # Most tests are about the data plane; the admin API has its own tests (and would
            # otherwise want the fixed default port 127.0.0.1:9080 in every gateway).
            text += "\nadmin: {enabled: false}\n"
        path.write_text(text)
        gw = Gateway(path)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
