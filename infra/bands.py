"""Dispatch bands: a job's priority raised by how long it has waited (aging). The one
rule that the grouping projector dispatches by and that `GET /queues` shows.

Dispatch tickets wait in one queue per band, and in one more above band 5, `URGENT`, for
batches with a job submitted at priority 5. Aging lifts a batch up to band 5, never into
the urgent queue: a busy agent gives its batch back between tests for urgent work only,
so a batch that merely waited long goes to the next agent that comes free instead of
costing another batch a second install.

Waits are counted in whole microseconds so that the moment a band rises is exact.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

TOP_BAND = 5
BANDS = (5, 4, 3, 2, 1)
URGENT = TOP_BAND + 1
"""The dispatch queue of band-5 batches with a job submitted at priority 5."""
QUEUES = (URGENT, *BANDS)
"""Every dispatch queue of a target, the most urgent first."""
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


def queue_of(priority: int, queued_at: datetime, now: datetime, step: timedelta | None) -> int:
    """The dispatch queue of a job of `priority` waiting since `queued_at`, at `now`:
    `URGENT` for priority 5, else its aged band."""
    if priority >= TOP_BAND:
        return URGENT
    return aged(priority, queued_at, now, step)


def queue_name(queue: int) -> str:
    return "urgent work" if queue == URGENT else f"band {queue}"
