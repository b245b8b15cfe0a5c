"""PolicyEnvironment's rate-limit table: over the master's shared region, or private and of
``limits.rate_limit_memory`` bytes in single-process mode (``isekai.server``)."""

from __future__ import annotations

import asyncio
import mmap

from isekai._core.ratelimit import LimitTable
from isekai.config.loader import load_config_text
from isekai.policies.environment import PolicyEnvironment
from isekai.worker import Worker

MEMORY = 1024 * 1024


def slots_in(size: int) -> int:
    slots = 8
    while LimitTable.bytes_for(slots + 8) <= size:
        slots += 8
    return slots


def test_environment_rate_table_fills_the_shared_region():
    region = mmap.mmap(-1, MEMORY, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    table = PolicyEnvironment(shared_memory=region).rate_table()
    assert table.slots == slots_in(MEMORY)
    assert PolicyEnvironment(shared_memory=region).rate_table().slots == table.slots


def test_environment_private_rate_table_has_the_configured_memory():
    assert PolicyEnvironment(rate_limit_memory=MEMORY).rate_table().slots == slots_in(MEMORY)
    big = 64 * MEMORY
    assert PolicyEnvironment(rate_limit_memory=big).rate_table().slots == slots_in(big)


def test_environment_single_process_worker_honours_rate_limit_memory():
    """``workers: 1`` runs `isekai.server` (no master, no shared region): the table must
    still be ``limits.rate_limit_memory`` big, not the table's built-in default."""
    config = load_config_text(
        """
workers: 1
admin: {enabled: false}
limits: {rate_limit_memory: 32MiB}
listeners: [{name: public, bind: "127.0.0.1:0"}]
upstreams: {app: {targets: ["127.0.0.1:9"]}}
routes: [{name: a, match: {path: /a}, upstream: app}]
"""
    )
    loop = asyncio.new_event_loop()
    try:
        worker = Worker(config, loop)
        assert worker.policy_env.rate_table().slots == slots_in(32 * MEMORY)
    finally:
        loop.close()
