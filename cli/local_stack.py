"""`qgjob up`: everything on one machine, on the embedded servers by default, with its
components kept running until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING

import aiohttp
from rich.console import Console

from agent import app as agent_app
from agent import cancels
from cli import demo
from cli.client import ApiClient
from cli.supervisor import Supervisor
from infra import embedded, nats_auth, tokens
from infra import logging as qlogging
from infra import nats as qnats
from infra.eventlog import EventLog
from orchestrator import app as orchestrator_app
from projections import app as projections_app

if TYPE_CHECKING:
    from pathlib import Path

    from agent.runners import Runner
    from agent.worker import AgentConfig
    from infra import settings


async def _wait_for_api(url: str, components: Supervisor) -> None:
    """Until the API answers; raises the error of a component that failed first."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while components.failure is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise components.failure


LOG_FILE = "qgjob.log"
"""Under QG_HOME: every component's log lines, as JSON."""
UP_AGENTS_USER = "up-agents"
"""The NATS user of `qgjob up`'s own agents: their targets and agent ids only."""


async def run(
    config: settings.Settings,
    agents: list[tuple[AgentConfig, Runner]],
    run_demo: bool,
    exit_after_demo: bool,
    stop: asyncio.Event,
) -> None:
    """Start the servers (embedded unless configured), the projectors, the orchestrator
    and `agents`, then the demo; serve until `stop` is set (with `exit_after_demo`: until
    the demo ended), and stop everything, the agents first."""
    console = Console()
    config.home.mkdir(parents=True, exist_ok=True)
    grant = nats_auth.AgentGrant(
        user=UP_AGENTS_USER,
        targets=tuple(dict.fromkeys(t for agent, _ in agents for t in agent.targets)),
        agent_ids=tuple(agent.agent_id for agent, _ in agents),
    )
    with (config.home / LOG_FILE).open("a") as log_file:
        qlogging.configure("json", logging.INFO, log_file)
        async with embedded.servers(
            config.home,
            config.nats_url,
            config.database_url,
            agent_nats_url=config.agent_nats_url,
            agents=grant,
        ) as servers:
            components = Supervisor()
            try:
                starting = _start(components, config, servers, agents, run_demo, console)
                await cancels.unless_cancelled(asyncio.ensure_future(starting), stop)
                if not (exit_after_demo or stop.is_set()):
                    console.print("[bold]Up.[/] Ctrl-C stops everything.")
                    await stop.wait()
            finally:
                await components.stop()
    console.print("qgjob stopped.")


async def _start(
    components: Supervisor,
    config: settings.Settings,
    servers: embedded.Servers,
    agents: list[tuple[AgentConfig, Runner]],
    run_demo: bool,
    console: Console,
) -> None:
    """Start the components, show where everything is, run the demo. Started in this
    order, they stop in the reverse one: the agents first, while the orchestrator's
    append gate still records their goodbyes."""
    components.start("projectors", partial(projections_app.run, config, servers))
    components.start("orchestrator", partial(orchestrator_app.run, config, servers))
    await _wait_for_api(config.api_url, components)
    components.start("agents", partial(agent_app.run, servers, agents))
    token = await _local_admin_token(servers, config.home)
    _banner(console, config, servers, len(agents))
    if run_demo:
        async with ApiClient(config.api_url, token) as client:
            await demo.run_demo(client, console)


async def _local_admin_token(servers: embedded.Servers, home: Path) -> str:
    nc = await qnats.connect(servers.nats_url, name="qgjob-up")
    try:
        return await tokens.local_admin(EventLog(nc), home)
    finally:
        await qnats.close(nc)


def _banner(
    console: Console,
    config: settings.Settings,
    servers: embedded.Servers,
    agents: int,
) -> None:
    nats_url = nats_auth.without_credentials(servers.nats_url)
    credentials = config.home / embedded.NATS_DIR / nats_auth.CREDENTIALS_FILE
    lines = [
        f"[bold]qgjob[/] API {config.api_url}   data {config.home}   logs {config.home / LOG_FILE}",
        f"NATS {nats_url}   PostgreSQL {servers.database_url}",
        *(
            [
                f"NATS users in {credentials} (qgjob serve, project and agent on this"
                " machine find them there; agents get agent rights only)"
            ]
            if config.nats_url is None
            else []
        ),
        f"API admin token in {config.home / tokens.LOCAL_ADMIN_FILE} (the qgjob CLI reads it"
        " from there; elsewhere: export QG_TOKEN=...)",
        f"{agents} simulated agents (emulator and device). In another terminal:",
        "  qgjob submit --org-id=qualgent --app-version-id=xyz123"
        " --test=tests/onboarding.spec.js --target=emulator --priority=5 --wait",
    ]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)
