"""Composition root of an agent process: one or more device slots on one connection."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.js.errors import NotFoundError

from agent.runners.simulated import SimulatedConfig, SimulatedRunner
from agent.worker import Agent, AgentConfig
from infra import bands, embedded
from infra import events as ev
from infra import nats as qnats
from infra.eventlog import EventLog
from infra.stopping import stopped_within

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from agent.runners import Runner

log = structlog.get_logger(__name__)

BIND_RETRY_S = 0.5


def simulated_runner(config: SimulatedConfig, slot: int) -> Runner:
    """A simulated runner whose seed differs per slot, so slots do not fail in lockstep."""
    seed = None if config.seed is None else config.seed + slot
    return SimulatedRunner(msgspec.structs.replace(config, seed=seed))


async def run(
    servers: embedded.Servers,
    agents: list[tuple[AgentConfig, Runner]],
    stop: asyncio.Event,
) -> None:
    """Run the given agents until `stop` is set, connected with the agents' credentials."""
    async with contextlib.AsyncExitStack() as stack:
        nc = await qnats.connect(servers.agent_nats_url or servers.nats_url, name="qgjob-agent")
        stack.push_async_callback(qnats.close, nc)
        targets = {target for config, _ in agents for target in config.targets}
        registry = await _bind(nc.jetstream(), targets, stop)
        if registry is None:
            return
        events = EventLog(nc)
        async with asyncio.TaskGroup() as tasks:
            for config, runner in agents:
                tasks.create_task(Agent(nc, events, registry, runner, config).run(stop))


async def _bind(
    js: JetStreamContext, targets: set[ev.Target], stop: asyncio.Event
) -> KeyValue | None:
    """The registry bucket, once it and the work consumers of `targets` exist; None when
    `stop` is set first. Agents create nothing (their credentials allow none of it): the
    orchestrator declares the bucket and the projectors the consumers, and an agent
    started before them waits."""
    consumers = [qnats.work_consumer_name(t, band) for t in targets for band in bands.QUEUES]
    waiting = False
    while True:
        try:
            for name in consumers:
                await js.consumer_info(ev.WORK_STREAM, name)
            return await js.key_value(qnats.REGISTRY_BUCKET)
        except NotFoundError:
            if not waiting:
                log.info("agent_waiting_for_streams")
            waiting = True
        if await stopped_within(stop, BIND_RETRY_S):
            return None
