"""Keeping `qgjob up`'s components running: one that exits unexpectedly (a projector
whose PostgreSQL went away, say) is logged and started again after a bounded backoff,
and stopping stops them one at a time, the last started first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from infra.stopping import stopped_within

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeAlias

    Run: TypeAlias = Callable[[asyncio.Event], Awaitable[None]]
    """A component: runs until its stop event is set."""

log = structlog.get_logger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
"""Also how long a component must run for its next exit to start from FIRST_BACKOFF_S."""


@dataclass(frozen=True)
class _Running:
    stop: asyncio.Event
    task: asyncio.Task[None]


class Supervisor:
    """Runs components until stopped."""

    def __init__(self) -> None:
        self._running: list[_Running] = []
        self.failure: Exception | None = None
        """The first error a component exited with, if any (`qgjob up` gives up when
        one fails before the API answers: a fault to report, not one to ride out)."""

    def start(self, name: str, run: Run) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(self._keep(name, run, stop), name=name)
        self._running.append(_Running(stop, task))

    async def stop(self) -> None:
        """Stop every component, the last started first, each once the one before ended."""
        while self._running:
            component = self._running.pop()
            component.stop.set()
            await component.task

    async def _keep(self, name: str, run: Run, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff_s = FIRST_BACKOFF_S
        while True:
            started = loop.time()
            try:
                await run(stop)
            except Exception as exc:
                self.failure = self.failure or exc
                log.exception("component_failed", component=name)
            else:
                if stop.is_set():
                    return
                log.warning("component_exited", component=name)
            if loop.time() - started >= MAX_BACKOFF_S:
                backoff_s = FIRST_BACKOFF_S
            if await stopped_within(stop, backoff_s):
                return
            log.info("component_restarting", component=name, after_s=backoff_s)
            backoff_s = min(2 * backoff_s, MAX_BACKOFF_S)
