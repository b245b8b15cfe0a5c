"""Signal handling of a serving process (the single process or a forked worker)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

__all__ = ["Signals"]


class Signals:
    """SIGTERM/SIGINT: drain; SIGQUIT or a second SIGINT: stop at once; SIGHUP: ``reload``;
    SIGUSR1: every callback in ``reopen`` (log files open their path again, after rotation)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reload: Callable[[], None] | None):
        self.stop = asyncio.Event()
        self.quit = asyncio.Event()
        self._interrupts = 0
        self.reopen: list[Callable[[], None]] = []
        loop.add_signal_handler(signal.SIGUSR1, self._reopen)
        loop.add_signal_handler(signal.SIGTERM, self._terminate)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, reload)
        else:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the master reloads, not workers

    def _reopen(self) -> None:
        for callback in self.reopen:
            callback()

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
