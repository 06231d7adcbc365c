"""Composition root of an agent process: one or more device slots on one connection."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import msgspec
import structlog

from agent.runners.simulated import SimulatedConfig, SimulatedRunner
from agent.worker import Agent, AgentConfig
from infra import embedded
from infra import nats as qnats
from infra.eventlog import EventLog

if TYPE_CHECKING:
    from agent.runners import Runner

log = structlog.get_logger(__name__)


def simulated_runner(config: SimulatedConfig, slot: int) -> Runner:
    """A simulated runner whose seed differs per slot, so slots do not fail in lockstep."""
    seed = None if config.seed is None else config.seed + slot
    return SimulatedRunner(msgspec.structs.replace(config, seed=seed))


async def run(
    servers: embedded.Servers,
    agents: list[tuple[AgentConfig, Runner]],
    stop: asyncio.Event,
) -> None:
    """Run the given agents until `stop` is set. The streams and work consumers are
    declared here too (idempotently), so agents may start before the projectors."""
    async with contextlib.AsyncExitStack() as stack:
        nc = await qnats.connect(servers.nats_url, name="qgjob-agent")
        stack.push_async_callback(qnats.close, nc)
        js = nc.jetstream()
        await qnats.declare_streams(js)
        await qnats.declare_work_consumers(js, max(c.ticket_ack_wait_s for c, _ in agents))
        events = EventLog(nc)
        registry = await qnats.registry(js, max(c.heartbeat_ttl_s for c, _ in agents))
        async with asyncio.TaskGroup() as tasks:
            for config, runner in agents:
                tasks.create_task(Agent(nc, events, registry, runner, config).run(stop))
