"""Fixtures for the conformance suite: a raw upstream and a gateway process in front of it."""

from __future__ import annotations

import pytest

from tests.conformance.wire import config
from tests.support.raw_upstream import RawUpstream


@pytest.fixture
def up():
    with RawUpstream() as raw:
        yield raw


@pytest.fixture
def make_gw(start_gateway, up):
    """Start a gateway in front of `up`; keyword arguments go to `wire.config`."""

    def start(**kwargs):
        return start_gateway(config(up.port, **kwargs))

    return start


@pytest.fixture
def gw(make_gw):
    return make_gw()
