"""Waiting that a stop cuts short: the pause between two tries of a loop that runs until
its `stop` event is set."""

from __future__ import annotations

import asyncio
import contextlib


async def stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less if `stop` is set meanwhile; whether it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
