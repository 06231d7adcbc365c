"""Killing one kind of component with SIGKILL at a moment a seeded generator picks, and
bringing it back: the same command line, or the same server on the same data and
address. A strike ends when the API reports itself healthy again."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from tests.chaos.cluster import agent_name, renamed
from tests.chaos.workload import ORG

if TYPE_CHECKING:
    import random

    from tests.chaos.cluster import Cluster
    from tests.chaos.servers import RestartableNats, RestartablePostgres
    from tests.stack import Stack

RECOVERY_TIMEOUT_S = 15.0
"""A restart takes a few seconds; much longer is an outage the test reports."""


class Victim(enum.StrEnum):
    """What a scenario kills."""

    AGENT = "agent"
    ORCHESTRATOR = "orchestrator"
    PROJECTOR = "projector"
    NATS = "nats"
    POSTGRES = "postgres"


COMPONENT_OF = {Victim.ORCHESTRATOR: "serve", Victim.PROJECTOR: "project"}
"""The process of the victims that are qgjob components with one process."""


class RecoveryTimeout(Exception):
    """The stack did not report itself healthy after a strike."""


@dataclass
class Striker:
    """Kills `victim` when asked, and counts what it did."""

    victim: Victim
    rng: random.Random
    cluster: Cluster
    stack: Stack
    nats: RestartableNats
    postgres: RestartablePostgres
    downtime_s: tuple[float, float] = (0.2, 1.5)
    """How long a killed component stays down, drawn uniformly."""
    fresh_agent_ids: bool = False
    """Restart a killed agent process under new agent ids instead of its own."""
    held_down: set[str] = field(default_factory=set)
    """Components killed on purpose and not yet restarted (the supervisor skips them)."""
    kills: int = 0
    mid_test: int = 0
    """Agent kills that hit a process with a test running."""

    async def strike(self) -> None:
        """Kill the victim, keep it down a moment, restart it, wait until healthy."""
        downtime = self.rng.uniform(*self.downtime_s)
        match self.victim:
            case Victim.NATS:
                await self.nats.kill()
                await asyncio.sleep(downtime)
                await self.nats.start()
            case Victim.POSTGRES:
                await self.postgres.kill()
                await asyncio.sleep(downtime)
                await self.postgres.restart()
            case Victim.AGENT:
                await self._bounce(await self._choose_agent(), downtime)
            case _:
                await self._bounce(COMPONENT_OF[self.victim], downtime)
        self.kills += 1
        try:
            async with asyncio.timeout(RECOVERY_TIMEOUT_S):
                await self.stack.wait_healthy(lambda: None)
        except TimeoutError as exc:
            message = f"not healthy {RECOVERY_TIMEOUT_S:g} s after killing the {self.victim}"
            raise RecoveryTimeout(message) from exc

    async def _bounce(self, name: str, downtime: float) -> None:
        self.held_down.add(name)
        try:
            await self.cluster.kill(name)
            await asyncio.sleep(downtime)
            command = self.cluster.components[name].command
            if self.fresh_agent_ids and agent_name(command) is not None:
                command = renamed(command, f"{name}-r{self.kills + 1}")
            await self.cluster.respawn(name, command)
        finally:
            self.held_down.discard(name)

    async def _choose_agent(self) -> str:
        """An agent process with a test running, if the read model shows one (it may
        trail by a moment), else any agent process."""
        running = [self.cluster.process_of(agent_id) for agent_id in await self._running_agents()]
        busy = sorted({name for name in running if name is not None})
        if busy:
            self.mid_test += 1
            return self.rng.choice(busy)
        return self.rng.choice(self.cluster.agent_names)

    async def _running_agents(self) -> list[str]:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(5):
                status, page = await self.stack.request(
                    "GET", f"/jobs?org_id={ORG}&status=running&limit=100"
                )
            if status == 200:
                return [job["agent_id"] for job in page["jobs"] if job.get("agent_id")]
        return []
