"""The qgjob components as separate OS processes, the way production runs them: the
orchestrator (`qgjob serve`), the projectors (`qgjob project`) and simulated agents
(`qgjob agent`), each `python -m cli ...` with its logs in a file. The bench process
starts them, waits until they are ready, and stops them by the PIDs it started."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from infra import embedded
from infra import events as ev
from infra import nats as qnats
from projections import app as projections_app
from tests.bench.measure import BenchError, progress
from tests.stack import Stack, admin_token

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from nats.js import JetStreamContext

READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
"""SIGTERM, then SIGKILL if the process is still there after this long."""
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class Command:
    """One component to start: a name for its log file and its `qgjob` arguments."""

    name: str
    args: tuple[str, ...]

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cli", *self.args]


SERVE = Command("serve", ("serve",))
PROJECT = Command("project", ("project",))


def emulator_agents(slots: int) -> Command:
    """One agent process with `slots` simulated emulator agents whose jobs take no time."""
    args = ("agent", "--target", "emulator", "--slots", str(slots), "--name", "bench")
    return Command("agent", (*args, "--install-s", "0", "--test-s", "0"))


@dataclass
class Component:
    """A started component process and the file its stdout and stderr go to."""

    command: Command
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def name(self) -> str:
        return self.command.name

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode} at start-up")

    async def stop(self) -> int:
        """SIGTERM, wait, SIGKILL after STOP_GRACE_S; returns the exit status."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_GRACE_S):
                    await self.process.wait()
            except TimeoutError:
                progress(f"{self.name} (pid {self.process.pid}) ignored SIGTERM: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        return self.process.returncode if self.process.returncode is not None else -1

    def log_tail(self) -> str:
        with contextlib.suppress(OSError), self.log_path.open(errors="replace") as log_file:
            return "".join(deque(log_file, LOG_TAIL_LINES))
        return ""


def component_env(servers: embedded.Servers, port: int) -> dict[str, str]:
    """The bench's environment without its own QG_* settings, plus the servers, the API
    port and JSON logs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("QG_")}
    env.update(
        QG_NATS_URL=servers.nats_url,
        QG_DATABASE_URL=servers.database_url,
        QG_API_PORT=str(port),
        QG_LOG_FORMAT="json",
        QG_RATE_LIMIT_RPS="0",  # one client measuring throughput is not abuse
    )
    return env


def open_log(path: Path) -> int:
    """A file descriptor appending to `path`, for a child's stdout and stderr."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def spawn(command: Command, env: dict[str, str], log_path: Path) -> Component:
    log_fd = open_log(log_path)
    try:
        process = await asyncio.create_subprocess_exec(
            *command.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            preexec_fn=embedded.die_with_parent,
        )
    finally:
        os.close(log_fd)
    return Component(command=command, process=process, log_path=log_path)


async def wait_for_api(stack: Stack, components: Sequence[Component]) -> None:
    """Until `GET /health` answers 200; fails when a component exits first."""

    def check() -> None:
        for component in components:
            component.check_alive()

    await stack.wait_healthy(check)


async def wait_for_projectors(
    js: JetStreamContext, since: dt.datetime, components: Sequence[Component]
) -> None:
    """Until every read-model projector has (re)created its durable consumer on
    QG_EVENTS after `since` and has a fetch waiting on it: the process is following the
    stream, so catch-up times do not include its start-up."""
    durables = {qnats.projection_consumer_name(p.name) for p in projections_app.read_models()}
    while True:
        for component in components:
            component.check_alive()
        attached = {
            info.name
            for info in await js.consumers_info(ev.EVENTS_STREAM)
            if info.created >= since and (info.num_waiting or 0) > 0
        }
        if durables <= attached:
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(
    servers: embedded.Servers,
    js: JetStreamContext,
    log_dir: Path,
    label: str,
    *,
    agents: Command | None = None,
) -> AsyncIterator[Stack]:
    """Start the orchestrator and the projectors against `servers`, wait until the API
    answers and the projectors follow the stream, then start `agents` (an agent binds to
    the work consumers the projectors declare, and exits if they are missing); yield a
    client of the API, and stop every process on exit. Logs go to
    `log_dir/<label>-<name>.log`; on a failure their last lines go to stderr."""
    port = embedded.free_port()
    env = component_env(servers, port)
    since = dt.datetime.now(dt.UTC)
    components: list[Component] = []
    failed = False
    try:
        for command in (SERVE, PROJECT):
            components.append(await spawn(command, env, log_dir / f"{label}-{command.name}.log"))
        token = await admin_token(servers)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            stack = Stack(f"http://127.0.0.1:{port}", session)
            async with asyncio.timeout(READY_TIMEOUT_S):
                await wait_for_api(stack, components)
                await wait_for_projectors(js, since, components)
            if agents is not None:
                components.append(await spawn(agents, env, log_dir / f"{label}-{agents.name}.log"))
            pids = ", ".join(f"{c.name} {c.process.pid}" for c in components)
            progress(f"{label}: running {pids}; API on port {port}")
            yield stack
    except BaseException:
        failed = True
        raise
    finally:
        await stop_all(components, show_logs=failed)


async def stop_all(components: Sequence[Component], *, show_logs: bool) -> None:
    """Stop the components in the reverse order of their start; report unclean exits.
    Interrupted (a second Ctrl-C), it SIGKILLs whatever is still running."""
    try:
        for component in reversed(components):
            status = await component.stop()
            if status != 0:
                progress(f"{component.name} (pid {component.process.pid}) exited with {status}")
            if status != 0 or show_logs:
                tail = component.log_tail()
                print(f"--- last lines of {component.log_path.name}\n{tail}", file=sys.stderr)
    finally:
        for component in components:
            if component.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    component.process.kill()
