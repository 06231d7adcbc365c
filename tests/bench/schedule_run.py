"""One run of the scheduling benchmark: fresh servers, the orchestrator and the
projectors as `qgjob serve` / `qgjob project` processes with the run's `QG_*`
scheduling settings, the fleet as a `tests.bench.schedule_agents` process; the workload
submitted on its schedule; then every job's record, the installs each agent made, and
the scheduling decisions on the log, once every job is final."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

import aiohttp
import msgspec
import nats.errors
from nats.js import api as js_api

from infra import api, embedded
from infra import events as ev
from infra import nats as qnats
from tests.bench import processes
from tests.bench.measure import BenchError, progress
from tests.bench.schedule_agents import Fleet
from tests.stack import Stack, admin_token

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from tests.bench.schedule_workload import Workload

FINISH_TIMEOUT_S = 300.0
POLL_S = 0.2
_DONE = re.compile(r'^qgjob_jobs\{status="(passed|failed|cancelled|dead)"\} (\S+)$', re.M)


@dataclass(frozen=True)
class System:
    """What is run: a name, the projector's settings and the devices' install cache."""

    name: str
    variables: dict[str, str]
    install_cache: int


@dataclass(frozen=True)
class Outcome:
    """What one run produced."""

    started: dt.datetime
    """When the first submission was sent."""
    jobs: list[api.JobView]
    installs: int
    decisions: list[ev.BatchEvent]
    """Batch events on the log (claimed, drained, yielded, due, split, installed)."""
    tickets: list[tuple[dt.datetime, ev.WorkTicket]]
    """Dispatch tickets as they were published, with when the bench saw them."""

    def count(self, tag: str) -> int:
        return sum(ev.tag_of(e) == tag for e in self.decisions)


@dataclass(frozen=True)
class _Module(processes.Command):
    """A component that is not the `qgjob` CLI: `python -m <name> <args>`."""

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.name, *self.args]


@contextlib.asynccontextmanager
async def _running(
    servers: embedded.Servers, js: JetStreamContext, log_dir: Path, system: System, fleet: Fleet
) -> AsyncIterator[Stack]:
    port = embedded.free_port()
    env = {
        **processes.component_env(servers, port),
        "QG_RATE_LIMIT_RPS": "0",
        **system.variables,
    }
    since = dt.datetime.now(dt.UTC)
    components: list[processes.Component] = []
    failed = False
    try:
        for command in (processes.SERVE, processes.PROJECT):
            log_path = log_dir / f"{system.name}-{command.name}.log"
            components.append(await processes.spawn(command, env, log_path))
        token = await admin_token(servers)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            stack = Stack(f"http://127.0.0.1:{port}", session)
            async with asyncio.timeout(processes.READY_TIMEOUT_S):
                await processes.wait_for_api(stack, components)
                await processes.wait_for_projectors(js, since, components)
                agents = _Module(
                    "tests.bench.schedule_agents", (msgspec.json.encode(fleet).decode(),)
                )
                log_path = log_dir / f"{system.name}-agents.log"
                components.append(await processes.spawn(agents, env, log_path))
                await _fleet_registered(stack, sum(n for _, n in fleet.groups), components)
            yield stack
    except BaseException:
        failed = True
        raise
    finally:
        await processes.stop_all(components, show_logs=failed)


async def _fleet_registered(
    stack: Stack, agents: int, components: list[processes.Component]
) -> None:
    while True:
        for component in components:
            component.check_alive()
        _, body = await stack.request("GET", "/agents")
        if len(body["agents"]) >= agents:
            return
        await asyncio.sleep(POLL_S)


async def _submit(stack: Stack, workload: Workload) -> dt.datetime:
    """Every submission at its offset from now; returns when the first was sent."""
    started, origin = dt.datetime.now(dt.UTC), time.monotonic()
    for submission in workload.submissions:
        await asyncio.sleep(max(0.0, origin + submission.at_s - time.monotonic()))
        status, reply = await stack.request("POST", "/jobs", {"jobs": list(submission.jobs)})
        if status != 201:
            raise BenchError(f"POST /jobs answered {status}: {reply}")
    return started


async def _finished(stack: Stack, total: int) -> None:
    async with asyncio.timeout(FINISH_TIMEOUT_S):
        while True:
            async with stack.session.get(stack.api_url + "/metrics") as response:
                text = await response.text()
            if sum(float(n) for _, n in _DONE.findall(text)) >= total:
                return
            await asyncio.sleep(POLL_S)


async def _all_jobs(stack: Stack) -> list[api.JobView]:
    jobs: list[api.JobView] = []
    cursor = ""
    while True:
        _, body = await stack.request("GET", f"/jobs?limit=500{cursor}")
        page = msgspec.convert(body, api.JobPage)
        jobs += page.jobs
        if page.next_cursor is None:
            return jobs
        cursor = f"&cursor={page.next_cursor}"


async def _decisions(js: JetStreamContext) -> list[ev.BatchEvent]:
    """Batch events on the log, oldest first."""
    found: list[ev.BatchEvent] = []
    sub = await js.pull_subscribe(
        "qg.evt.batch.>",
        stream=ev.EVENTS_STREAM,
        config=js_api.ConsumerConfig(ack_policy=js_api.AckPolicy.NONE),
    )
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                return found
            found += [e for e in map(ev.decode, (m.data for m in msgs)) if _is_batch(e)]
    finally:
        await sub.unsubscribe()


def _is_batch(event: ev.Event) -> TypeGuard[ev.BatchEvent]:
    return isinstance(event, ev.BatchEvent)


async def run(home: Path, system: System, workload: Workload) -> Outcome:
    """Run `workload` through `system` on servers of its own under `home`."""
    shape = workload.shape
    fleet = Fleet(
        groups=[([ev.Target(t) for t in targets], n) for targets, n in workload.fleet],
        install_s=shape.install_s,
        test_s=shape.test_s,
        install_cache=system.install_cache,
    )
    progress(f"{system.name}: starting servers and components")
    async with embedded.servers(home / system.name, None, None) as servers:
        nc = await qnats.connect(servers.nats_url, name="qgjob-bench")
        tickets: list[tuple[dt.datetime, ev.WorkTicket]] = []

        async def seen(msg: Msg) -> None:
            tickets.append((dt.datetime.now(dt.UTC), ev.ticket_decoder.decode(msg.data)))

        try:
            js = nc.jetstream()
            await nc.subscribe(ev.WORK_SUBJECTS, cb=seen)
            async with _running(servers, js, home, system, fleet) as stack:
                progress(f"{system.name}: submitting {len(workload.jobs)} jobs")
                started = await _submit(stack, workload)
                await _finished(stack, len(workload.jobs))
                await stack.settled()
                jobs = await _all_jobs(stack)
                _, agents = await stack.request("GET", "/agents")
                installs = sum(agent["installs"] for agent in agents["agents"])
            decisions = await _decisions(js)
        finally:
            await qnats.close(nc)
    return Outcome(
        started=started, jobs=jobs, installs=installs, decisions=decisions, tickets=tickets
    )
