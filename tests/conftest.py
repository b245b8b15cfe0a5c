"""Shared fixtures: real upstream servers and real gateway processes, all on 127.0.0.1 port 0."""

from __future__ import annotations

import pytest

from tests.support import services
from tests.support.gateway import Gateway, start_from_yaml
from tests.support.upstream import Upstream


@pytest.fixture(scope="session")
def require_service():
    """`require_service("postgres" | "redis" | "amqp")` -> the service's URL, from
    ISEKAI_TEST_POSTGRES_DSN / ISEKAI_TEST_REDIS_URL / ISEKAI_TEST_AMQP_URL or the local default,
    after a real connection to it (probed once per session). Skips the test when the service does
    not answer, or fails it under CI=true."""
    problems: dict[str, str | None] = {}

    def require(name: str) -> str:
        url = services.service_url(name)
        if name not in problems:
            problems[name] = services.probe(name, url)
        if problems[name] is not None:
            services.unavailable(problems[name])
        return url

    return require


@pytest.fixture
def upstream():
    with Upstream() as up:
        yield up


@pytest.fixture
def start_gateway(tmp_path):
    """Call with YAML text (dedented); returns a running `Gateway`, stopped after the test."""
    started: list[Gateway] = []

    def start(yaml_text: str, name: str = "gateway.yaml") -> Gateway:
        gw = start_from_yaml(tmp_path, yaml_text, name)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
