"""Dispatch bands: a job's priority raised by how long it has waited (aging). The one
rule that the grouping projector dispatches by and that `GET /queues` shows.

Waits are counted in whole microseconds so that the moment a band rises is exact.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

TOP_BAND = 5
_MICROSECOND = timedelta(microseconds=1)


def aging_step(aging_interval_s: float | None) -> timedelta | None:
    """The wait that raises a band by one, in whole microseconds; None: no aging."""
    if aging_interval_s is None:
        return None
    return timedelta(microseconds=round(aging_interval_s * 1_000_000))


def aged(priority: int, queued_at: datetime, now: datetime, step: timedelta | None) -> int:
    """The band of a job of `priority` waiting since `queued_at`, at `now`:
    min(5, priority + whole steps waited)."""
    if step is None:
        return priority
    waited = max(0, (now - queued_at) // _MICROSECOND)
    return min(TOP_BAND, priority + waited // (step // _MICROSECOND))
