"""Composition root of the read side: the grouping projector and the read-model
projectors, run together until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from infra import connections, embedded
from infra import nats as qnats
from projections.agents import AgentsProjection
from projections.batches import BatchesProjection
from projections.grouping import GroupingProjector
from projections.jobs import JobsProjection
from projections.ops import ops_server
from projections.rebuild import Rebuilder
from projections.runner import Projection, ProjectionRunner

if TYPE_CHECKING:
    from infra.settings import Settings

log = structlog.get_logger(__name__)


def read_models() -> list[Projection]:
    """Every PostgreSQL read model, in the order a replay rebuilds them."""
    return [JobsProjection(), BatchesProjection(), AgentsProjection()]


async def run(settings: Settings, servers: embedded.Servers, stop: asyncio.Event) -> None:
    """Run every projector until `stop` is set; a crashed projector stops them all."""
    async with contextlib.AsyncExitStack() as stack:
        conns = await connections.open_all(stack, servers, "qgjob-projector")
        js, pool = conns.js, conns.pool
        await qnats.declare_work_consumers(js, settings.ticket_ack_wait_s)
        ops = ops_server(conns.nc, Rebuilder(js, servers.database_url, pool, read_models()))
        await ops.start()
        stack.push_async_callback(ops.stop)
        log.info("projectors_started")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(GroupingProjector(conns.nc, settings.scheduling).run(stop))
            for projection in read_models():
                tasks.create_task(ProjectionRunner(js, pool, projection).run(stop))
        log.info("projectors_stopped")
