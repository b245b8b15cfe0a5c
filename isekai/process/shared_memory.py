"""Memory the workers of one host share: the rate-limit table's region.

The master maps it (`reserve`) before it forks any worker, as anonymous shared memory
(``MAP_SHARED``): every worker, a restarted one too, inherits the same pages, so a limit of
R/s is R/s for the host, not per worker. The layout inside is the business of the table
(`isekai._core.ratelimit.LimitTable`); here it is only bytes. The size is
``limits.rate_limit_memory``, fixed for the life of the master (like nginx's
``limit_req_zone ... zone=name:10m``).
"""

from __future__ import annotations

import mmap

__all__ = ["reserve"]


def reserve(size: int) -> mmap.mmap:
    """``size`` bytes of zeroed memory shared with the processes forked after this call."""
    return mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
