"""Signal handling of a serving process (the single process or a forked worker)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

__all__ = ["Signals"]


class Signals:
    """SIGTERM/SIGINT: drain; SIGQUIT or a second SIGINT: stop at once; SIGHUP: ``reload``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reload: Callable[[], None] | None):
        self.stop = asyncio.Event()
        self.quit = asyncio.Event()
        self._interrupts = 0
        loop.add_signal_handler(signal.SIGTERM, self._terminate)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        else:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master reloads, not workers

    def _terminate(self) -> None:
        self.stop.set()

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            self._quit()
        self.stop.set()

    def _quit(self) -> None:
        self.quit.set()
        self.stop.set()
