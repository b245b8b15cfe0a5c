"""Fixtures for the conformance suite: a raw upstream and gateway processes in front of it, shared
by the tests of one module (one gateway per distinct configuration).

Between tests the upstream closes every connection and waits until the gateway has closed its
end (`RawUpstream.reset`), so each test starts with an empty upstream pool and a blank record, as
with a fresh gateway. A gateway that died during a test fails that test and is started afresh
for the next one.
"""

from __future__ import annotations

import pytest

from tests.conformance.wire import config
from tests.support.gateway import Gateway, start_from_yaml
from tests.support.raw_upstream import RawUpstream


@pytest.fixture(scope="module")
def raw_upstream():
    with RawUpstream() as raw:
        yield raw


@pytest.fixture(scope="module")
def gateways(raw_upstream, tmp_path_factory):
    """Configuration key -> the module's running gateway for it."""
    started: dict[str, Gateway] = {}
    yield started
    for gw in started.values():
        gw.stop()


@pytest.fixture
def up(raw_upstream, gateways):
    raw_upstream.reset()
    yield raw_upstream
    dead = {key: gw for key, gw in gateways.items() if gw.proc.poll() is not None}
    for key, gw in dead.items():
        del gateways[key]
        gw.stop()
    assert not dead, "a gateway died during this test:\n" + "\n".join(
        f"{key}: exit status {gw.proc.returncode}; log tail:\n{gw.output()[-3000:]}"
        for key, gw in dead.items()
    )


@pytest.fixture
def make_gw(gateways, up, tmp_path_factory):
    """The module's gateway in front of `up` for these `wire.config` keyword arguments (started on
    first use)."""

    def start(**kwargs) -> Gateway:
        key = repr(sorted(kwargs.items()))
        if key not in gateways:
            directory = tmp_path_factory.mktemp("gateway")
            gateways[key] = start_from_yaml(directory, config(up.port, **kwargs))
        return gateways[key]

    return start


@pytest.fixture
def gw(make_gw):
    return make_gw()
