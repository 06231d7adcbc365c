"""The scheduling benchmark's fleet as one process:
`python -m tests.bench.schedule_agents SPEC`, SPEC a JSON `Fleet`, against QG_NATS_URL.

Unlike `qgjob agent`, it sets what the benchmark varies: groups of agents serving
different targets, the size of their install cache (none for the naive baseline) and
exact simulated durations. SIGTERM or SIGINT stops the agents as `qgjob agent` does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING

import msgspec

from agent import app as agent_app
from agent.runners.simulated import SimulatedConfig
from agent.worker import AgentConfig
from infra import embedded, settings
from infra import events as ev
from infra import logging as qlogging

if TYPE_CHECKING:
    from agent.runners import Runner


class Fleet(msgspec.Struct, frozen=True, kw_only=True):
    groups: list[tuple[list[ev.Target], int]]
    """(targets served, agents)."""
    install_s: float
    test_s: float
    install_cache: int
    """Builds each device keeps; 0: it installs for every batch."""


def agents(fleet: Fleet) -> list[tuple[AgentConfig, Runner]]:
    runner = SimulatedConfig(
        install_s=fleet.install_s, test_s=fleet.test_s, jitter=0, fail_rate=0, seed=1
    )
    configs = [
        AgentConfig(
            agent_id=ev.AgentId(f"bench-{'_'.join(t.value for t in targets)}-{n}"),
            targets=tuple(targets),
            install_cache_size=fleet.install_cache,
        )
        for targets, count in fleet.groups
        for n in range(count)
    ]
    return [(config, agent_app.simulated_runner(runner, n)) for n, config in enumerate(configs)]


async def run(fleet: Fleet) -> None:
    config = settings.from_env()
    if config.nats_url is None:
        raise SystemExit("set QG_NATS_URL")
    servers = embedded.Servers(nats_url=config.nats_url, database_url="")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await agent_app.run(servers, agents(fleet), stop)


def main() -> None:
    qlogging.configure("json", level=logging.WARNING)
    asyncio.run(run(msgspec.json.decode(sys.argv[1], type=Fleet)))


if __name__ == "__main__":
    main()
