"""The qgjob components as OS processes (`tests.bench.processes`) that a chaos test can
SIGKILL and start again with the same command line, plus a supervisor that restarts a
component which exits by itself, as systemd or Kubernetes would (and counts it)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from infra import embedded
from tests.bench import processes
from tests.stack import Stack, admin_token

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from pathlib import Path

    from nats.js import JetStreamContext

SUPERVISOR_PERIOD_S = 0.2
"""How often the supervisor looks for components that exited by themselves."""
READY_TIMEOUT_S = 60.0

AGENT_PREFIX = "agent-"
SETTINGS = {
    "QG_AGENT_TTL_S": "3",
    "QG_TICKET_ACK_WAIT_S": "3",
    # Kills cost attempts; a job must not die of them (a dead job is still checked).
    "QG_MAX_ATTEMPTS": "10",
    "QG_RETRY_BACKOFF_S": "0.1",
    "QG_RETRY_BACKOFF_CAP_S": "0.5",
}
"""Every component's settings: failures are noticed and retried within seconds."""


@dataclass(frozen=True)
class Crash:
    """A component that exited without being killed (its log says why)."""

    name: str
    returncode: int


@dataclass
class Cluster:
    """Running components by name, all started with `env` and logging into `log_dir`."""

    env: dict[str, str]
    log_dir: Path
    components: dict[str, processes.Component] = field(default_factory=dict)
    crashes: list[Crash] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def agent_names(self) -> list[str]:
        return [name for name in self.components if name.startswith(AGENT_PREFIX)]

    async def spawn(self, command: processes.Command) -> None:
        log_path = self.log_dir / f"{command.name}.log"
        self.components[command.name] = await processes.spawn(command, self.env, log_path)

    async def kill(self, name: str) -> None:
        """SIGKILL one component and reap it; the supervisor leaves it dead until
        `respawn`."""
        async with self._lock:
            process = self.components[name].process
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def respawn(self, name: str, command: processes.Command | None = None) -> None:
        """Start a killed component again, appending to the same log: with its command
        line (same agent ids, same port), or with `command` under the same name."""
        async with self._lock:
            await self.spawn(command or self.components[name].command)

    def process_of(self, agent_id: str) -> str | None:
        """The name of the agent process that runs slot `agent_id` (`agent-a-2` is slot 2
        of the process started with `--name agent-a`)."""
        prefix = agent_id.rpartition("-")[0]
        for name, component in self.components.items():
            if agent_name(component.command) == prefix:
                return name
        return None

    async def supervise(self, killed: set[str]) -> None:
        """Restart any component that exited on its own (not one in `killed`, which the
        test is holding down); runs until cancelled."""
        while True:
            await asyncio.sleep(SUPERVISOR_PERIOD_S)
            async with self._lock:
                for name, component in list(self.components.items()):
                    code = component.process.returncode
                    if code is None or name in killed:
                        continue
                    self.crashes.append(Crash(name, code))
                    await self.spawn(component.command)

    async def stop(self, *, show_logs: bool) -> None:
        await processes.stop_all(list(self.components.values()), show_logs=show_logs)


def component_env(
    servers: embedded.Servers, port: int, settings: Mapping[str, str]
) -> dict[str, str]:
    """The environment of every component: the servers, the API port, `settings`."""
    return {**processes.component_env(servers, port), **settings}


@contextlib.asynccontextmanager
async def running(
    servers: embedded.Servers,
    js: JetStreamContext,
    log_dir: Path,
    agents: list[processes.Command],
    settings: Mapping[str, str] = SETTINGS,
) -> AsyncIterator[tuple[Cluster, Stack]]:
    """Start the orchestrator and the projectors, wait until the API answers and the
    projectors follow the stream, start the agents; yield the cluster and an API client.
    Every process is stopped on exit, with its log tail on stderr if the block failed."""
    port = embedded.free_port()
    cluster = Cluster(env=component_env(servers, port, settings), log_dir=log_dir)
    since = dt.datetime.now(dt.UTC)
    failed = False
    try:
        for command in (processes.SERVE, processes.PROJECT):
            await cluster.spawn(command)
        token = await admin_token(servers)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            stack = Stack(f"http://127.0.0.1:{port}", session)
            started = list(cluster.components.values())
            async with asyncio.timeout(READY_TIMEOUT_S):
                await processes.wait_for_api(stack, started)
                await processes.wait_for_projectors(js, since, started)
            for command in agents:
                await cluster.spawn(command)
            yield cluster, stack
    except BaseException:
        failed = True
        raise
    finally:
        await cluster.stop(show_logs=failed)


def agent_command(name: str, slots: int, install_s: float, test_s: float) -> processes.Command:
    """An agent process named `agent-<name>` with `slots` simulated emulator and device
    slots; its agent ids are `agent-<name>-1` … (the same ids again after a restart)."""
    process_name = f"{AGENT_PREFIX}{name}"
    args = ("agent", "--target", "emulator", "--target", "device", "--slots", str(slots))
    timing = ("--install-s", str(install_s), "--test-s", str(test_s), "--fail-rate", "0")
    return processes.Command(process_name, (*args, "--name", process_name, *timing))


def agent_name(command: processes.Command) -> str | None:
    """The `--name` of an agent command: the prefix of its agent ids."""
    args = command.args
    return args[args.index("--name") + 1] if "--name" in args else None


def renamed(command: processes.Command, name: str) -> processes.Command:
    """The same agent command with another `--name`: a new machine in the old one's place."""
    at = command.args.index("--name") + 1
    return processes.Command(command.name, (*command.args[:at], name, *command.args[at + 1 :]))
