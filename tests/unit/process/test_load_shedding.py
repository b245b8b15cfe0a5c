"""The loop-lag monitor on a real uvloop loop and a real `_core` ServerState: a blocked loop
turns shedding on, the first tick on time turns it off, `max_loop_lag: 0` never measures."""

from __future__ import annotations

import asyncio
import time

import uvloop

from isekai._core.counters import Counters
from isekai._core.protocol import ServerState
from isekai._core.router import Router
from isekai.process.load_shedding import LoopLagMonitor


def make_state(loop: asyncio.AbstractEventLoop) -> ServerState:
    return ServerState(Router(), Counters(), loop)


def test_load_shedding_blocked_loop_sheds_then_recovers():
    loop = uvloop.new_event_loop()
    try:
        state = make_state(loop)
        monitor = LoopLagMonitor(loop, state, interval=0.02)
        monitor.configure(0.05, 2.2)
        monitor.start()
        seen: list[bool] = []

        async def scenario() -> None:
            await asyncio.sleep(0.1)
            seen.append(state.shedding)  # on time so far
            time.sleep(0.2)  # the loop is blocked
            await asyncio.sleep(0)  # the late tick runs
            for _ in range(50):
                if state.shedding:
                    break
                await asyncio.sleep(0.001)
            seen.append(state.shedding)
            await asyncio.sleep(0.1)  # ticks on time again
            seen.append(state.shedding)

        loop.run_until_complete(scenario())
        assert seen == [False, True, False]
        assert monitor.episodes == 1
        assert state.shed_header == b"retry-after: 3\r\n"
        monitor.stop()
        assert not state.shedding
    finally:
        loop.close()


def test_load_shedding_off_when_max_loop_lag_is_zero():
    loop = uvloop.new_event_loop()
    try:
        state = make_state(loop)
        monitor = LoopLagMonitor(loop, state, interval=0.01)
        monitor.configure(0.0, 1.0)
        monitor.start()

        async def scenario() -> None:
            time.sleep(0.1)
            await asyncio.sleep(0.05)

        loop.run_until_complete(scenario())
        assert not state.shedding and monitor.lag == 0.0 and monitor.episodes == 0
        # a reload turning it on starts measuring; turning it off again stops
        monitor.configure(0.01, 1.0)
        assert monitor._timer is not None
        monitor.configure(0.0, 1.0)
        assert monitor._timer is None
    finally:
        loop.close()


def test_load_shedding_stats_read_the_core_counter():
    loop = uvloop.new_event_loop()
    try:
        state = make_state(loop)
        state.shed = 7
        monitor = LoopLagMonitor(loop, state)
        assert monitor.stats() == {"load_shed": 7, "loop_lag": 0.0, "episodes": 0}
    finally:
        loop.close()
