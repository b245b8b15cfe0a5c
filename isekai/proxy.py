"""The slow path: a route's async policies, one Task per request (DESIGN.md §4 step 4).

`_core` runs a chain inline until it meets a policy whose request phase is a coroutine (or a
synchronous one that returned an awaitable for this request: a cache miss needing I/O); it then
calls the worker's `SlowPath` with the request, the policy, its place in the chain and that
awaitable, and stops. The Task awaits the policy within its ``deadline`` and calls back into
`_core`: ``resume`` (continue with the next policy, or send the answer), ``fail`` (the policy
raised: 500) or ``time_out`` (503). Meanwhile the request body waits in `_core` under the
pending-body pause. When the client leaves (or the request is answered otherwise, e.g. a 408
while its body stalls) `_core` cancels the Task.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["SlowPath"]


class SlowPath:
    """Runs async request phases for the `_core` of one worker loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started = 0  # Tasks made: one per request that reached an async policy

    def __call__(self, req: Any, policy: Any, index: int, awaitable: Any = None) -> None:
        self.started += 1
        req.task = self.loop.create_task(self._run(req, policy, index, awaitable))

    async def _run(self, req: Any, policy: Any, index: int, awaitable: Any) -> None:
        try:
            async with asyncio.timeout(policy.deadline) as deadline:
                if awaitable is None:
                    awaitable = policy.start_async(req)
                answer = await awaitable
        except asyncio.CancelledError:
            raise  # the client left, or the request was answered otherwise
        except TimeoutError as exc:
            if deadline.expired():
                req.time_out(index)
            else:
                req.fail(index, exc)
            return
        except Exception as exc:
            req.fail(index, exc)
            return
        req.resume(index, answer)
