"""Agents on a nats-server that authorizes its clients (infra/nats_auth.py): with agent
credentials an agent runs jobs end to end, and it cannot append what only the
orchestrator writes (a `JobSubmitted` above all), publish or request outside an agent's
subjects, or subscribe to other subjects."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats
import pytest
from nats.js.errors import KeyNotFoundError, NotFoundError

from agent import app as agent_app
from agent.runners.simulated import SimulatedConfig
from infra import append_gate, embedded, logstore, nats_auth, tokens
from infra import events as ev
from infra import nats as qnats
from infra.eventlog import EventLog, EventLogError
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from nats.aio.client import Client
    from nats.aio.msg import Msg

AGENT_USER = "emulators"
AGENT_ID = "agent-0"
"""The id `simulated_agents(1)` gives its agent."""
GRANT = nats_auth.AgentGrant(user=AGENT_USER, targets=(ev.Target.EMULATOR,), agent_ids=(AGENT_ID,))


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[embedded.NatsServer]:
    """The embedded nats-server with authorization: the service user and `GRANT`."""
    server = embedded.start_nats(tmp_path / "nats", agents=[GRANT])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def servers(nats_server: embedded.NatsServer, database_url: str) -> embedded.Servers:
    return embedded.Servers(
        nats_url=nats_server.url_as(nats_auth.SERVICE_USER),
        database_url=database_url,
        agent_nats_url=nats_server.url_as(AGENT_USER),
    )


async def test_the_server_refuses_a_client_without_credentials_at_once(
    nats_server: embedded.NatsServer,
) -> None:
    wrong = nats_auth.with_user(nats_server.url, AGENT_USER, "not-the-password")
    for url in (nats_server.url, wrong):
        with pytest.raises(qnats.CredentialsRefused):
            await asyncio.wait_for(qnats.connect(url, "stranger"), 5)


async def test_an_agent_with_agent_credentials_runs_a_job_end_to_end(
    servers: embedded.Servers,
) -> None:
    """From registering to its goodbye, recorded as the stack stops."""
    async with running_stack(servers, simulated_agents(1)) as stack:
        job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
        [view] = await stack.wait_all([job.job_id], timeout_s=30)
    nc = await qnats.connect(servers.nats_url, "test")
    try:
        log = await logstore.fetch(nc.jetstream(), view.log_ref or "")
        agent_events = await EventLog(nc).read(ev.agent_subject(AGENT_ID))
    finally:
        await qnats.close(nc)
    assert (view.status, view.agent_id) == ("passed", AGENT_ID)
    assert view.events == ["job.submitted", "job.assigned", "job.started", "job.passed"]
    assert log is not None
    assert b"ok tests/a.spec.js" in log
    assert [ev.tag_of(event) for _, event in agent_events] == ["agent.registered", "agent.stopped"]


async def test_an_agent_with_agent_credentials_stops_the_test_of_a_cancelled_job(
    servers: embedded.Servers,
) -> None:
    """The agent sees the job's `JobCancelled` (job events reach the agent account) and
    goes back to its batch: its next claim finds the batch drained."""
    long_tests = SimulatedConfig(install_s=0.05, test_s=600, fail_rate=0.0)
    async with running_stack(servers, simulated_agents(1, runner=long_tests)) as stack:
        job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
        await stack.reach(job.job_id, "running", timeout_s=30)
        status, _ = await stack.request("DELETE", f"/jobs/{job.job_id}")
        nc = await qnats.connect(servers.nats_url, "test")
        try:
            drained = await _drained(EventLog(nc), ev.batch_subject(job.batch_id))
        finally:
            await qnats.close(nc)
    assert status == 200
    assert drained.agent_id == AGENT_ID


async def test_an_agent_started_before_the_streams_waits_for_them_and_creates_nothing(
    servers: embedded.Servers,
) -> None:
    """It asks for its work consumers, finds none, creates none (it may not), and works
    once the stack has declared them."""
    service = await qnats.connect(servers.nats_url, "test")
    asked = await service.subscribe(f"$JS.API.CONSUMER.INFO.{ev.WORK_STREAM}.>")
    stop = asyncio.Event()
    agents = asyncio.create_task(agent_app.run(servers, simulated_agents(1), stop))
    try:
        await asked.next_msg(timeout=10)
        await asked.unsubscribe()
        streams_meanwhile = await service.jetstream().streams_info()
        async with running_stack(servers, []) as stack:
            job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
            [view] = await stack.wait_all([job.job_id], timeout_s=30)
            stop.set()
            await agents
    finally:
        stop.set()
        await qnats.close(service)
    assert streams_meanwhile == []
    assert (view.status, view.agent_id) == ("passed", AGENT_ID)


async def _drained(events: EventLog, subject: str) -> ev.BatchDrained:
    """The batch's first `BatchDrained`, waiting up to 10 s for it."""
    async with asyncio.timeout(10):
        while True:
            for _, event in await events.read(subject):
                if isinstance(event, ev.BatchDrained):
                    return event
            await asyncio.sleep(0.05)


REFUSALS_TIMEOUT_S = 5.0


class Refusals:
    """What the server refused one connection, as nats-py reports it (an error callback:
    the connection stays open)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._came = asyncio.Condition()

    async def record(self, error: Exception) -> None:
        async with self._came:
            self.errors.append(str(error).removeprefix("nats: "))
            self._came.notify_all()

    async def reported(self, nc: Client, expected: int = 0) -> list[str]:
        """Every refusal of what `nc` sent so far, once `expected` of them came: the
        server reports most violations before it answers the PING that `flush` sends,
        but one on a JetStream API subject (reached through the account's imports) may
        come after it."""
        await nc.flush()
        async with asyncio.timeout(REFUSALS_TIMEOUT_S), self._came:
            await self._came.wait_for(lambda: len(self.errors) >= expected)
        return self.errors


@pytest.fixture
async def service(nats_server: embedded.NatsServer) -> AsyncIterator[Client]:
    """A service connection, with the streams declared and the append gate served."""
    url = nats_server.url_as(nats_auth.SERVICE_USER)
    nc = await qnats.connect(url, "test-service")
    js = nc.jetstream()
    await qnats.declare_streams(js)
    await qnats.declare_work_consumers(js, ack_wait_s=30)
    await qnats.registry(js, ttl_s=10)
    try:
        async with append_gate.serving(url):
            yield nc
    finally:
        await qnats.close(nc)


@pytest.fixture
async def agent(nats_server: embedded.NatsServer) -> AsyncIterator[tuple[Client, Refusals]]:
    """A connection with the agent's credentials, and what the server refused it."""
    refusals = Refusals()
    nc = await nats.connect(
        nats_server.url_as(AGENT_USER),
        error_cb=refusals.record,
        inbox_prefix=qnats.inbox_prefix(AGENT_USER),
    )
    try:
        yield nc, refusals
    finally:
        await nc.close()


def _submitted(job_id: str) -> ev.JobSubmitted:
    return ev.JobSubmitted(
        at=ev.utcnow(),
        job_id=ev.JobId(job_id),
        org_id="qualgent",
        app_version_id="v1",
        test_path="tests/a.spec.js",
        target=ev.Target.EMULATOR,
        priority=3,
        batch_id=ev.BatchId("b1"),
    )


async def test_agent_credentials_cannot_append_what_only_the_orchestrator_writes(
    service: Client, agent: tuple[Client, Refusals]
) -> None:
    agent_nc, refusals = agent
    as_agent = EventLog(agent_nc)
    submitted = await EventLog(service).append(_submitted("j1"), expected_seq=0)
    at, job_id, agent_id = ev.utcnow(), ev.JobId("j1"), ev.AgentId(AGENT_ID)
    started = ev.JobStarted(at=at, job_id=job_id, agent_id=agent_id, attempt=1)
    assigned = ev.JobAssigned(
        at=at, job_id=job_id, batch_id=ev.BatchId("b1"), agent_id=agent_id, attempt=1
    )
    refused: list[tuple[ev.Event, int | None, str]] = [
        (_submitted("j2"), 0, "agents may not append job.submitted"),
        (_submitted("j2"), None, "agents may not append job.submitted"),
        (assigned, submitted.seq, "agents may not append job.assigned"),
        (ev.JobCancelled(at=at, job_id=job_id), submitted.seq, "agents may not append job.cancel"),
        (ev.AgentLost(at=at, agent_id=agent_id), None, "agents may not append agent.lost"),
        (started, None, "job.started must be guarded by the job's current sequence"),
    ]
    for event, expected_seq, reason in refused:
        with pytest.raises(EventLogError, match=reason):
            await as_agent.append(event, expected_seq=expected_seq)
    # An event on another aggregate's subject than its own.
    reply = await agent_nc.request(
        ev.job_subject("j2"),
        ev.encode(started),
        headers={"Nats-Expected-Last-Subject-Sequence": str(submitted.seq)},
    )
    appended = await as_agent.append(started, expected_seq=submitted.seq)

    js = service.jetstream()
    with pytest.raises(NotFoundError):
        await js.get_last_msg(ev.EVENTS_STREAM, ev.job_subject("j2"))
    assert b'"code":403' in reply.data
    assert [seq for seq, _ in await EventLog(service).read(ev.job_subject("j1"))] == [
        submitted.seq,
        appended.seq,
    ]
    assert await refusals.reported(agent_nc) == []


OUT_OF_BOUNDS = [
    # (what the agent publishes to, the subject the server refuses after the agent
    # account's mappings)
    ("qg.evt.token.t1", "qg.gate.evt.token.t1"),
    ("qg.evt.agent.other-agent", "qg.gate.evt.agent.other-agent"),
    ("$KV.QG_AGENTS.other-agent", "qg.gate.kv.other-agent"),
    ("qg.work.emulator.p5", "qg.work.emulator.p5"),
    ("qg.rpc.ops", "qg.rpc.ops"),
    ("$JS.API.STREAM.DELETE.QG_EVENTS", "$JS.QG.API.STREAM.DELETE.QG_EVENTS"),
    ("$JS.API.STREAM.PURGE.QG_EVENTS", "$JS.QG.API.STREAM.PURGE.QG_EVENTS"),
    ("$JS.API.STREAM.INFO.QG_EVENTS", "$JS.QG.API.STREAM.INFO.QG_EVENTS"),
    ("$JS.API.CONSUMER.CREATE.QG_EVENTS", "$JS.QG.API.CONSUMER.CREATE.QG_EVENTS"),
    (
        "$JS.API.DIRECT.GET.QG_EVENTS.qg.evt.token.t1",
        "$JS.QG.API.DIRECT.GET.QG_EVENTS.qg.evt.token.t1",
    ),
    (
        "$JS.API.CONSUMER.MSG.NEXT.QG_WORK.work-device-p5",
        "$JS.QG.API.CONSUMER.MSG.NEXT.QG_WORK.work-device-p5",
    ),
]


async def test_agent_credentials_cannot_publish_outside_an_agents_subjects(
    service: Client, agent: tuple[Client, Refusals]
) -> None:
    agent_nc, refusals = agent
    js = service.jetstream()
    await EventLog(service).append(_submitted("j1"), expected_seq=0)
    before = {info.config.name: info.state.messages for info in await js.streams_info()}
    for subject, _ in OUT_OF_BOUNDS:
        await agent_nc.publish(subject, b"{}", reply=agent_nc.new_inbox())

    reported = await refusals.reported(agent_nc, expected=len(OUT_OF_BOUNDS))
    after = {info.config.name: info.state.messages for info in await js.streams_info()}
    assert reported == [
        f'permissions violation for publish to "{refused.lower()}"' for _, refused in OUT_OF_BOUNDS
    ]
    assert after == before
    with pytest.raises(KeyNotFoundError):
        await (await js.key_value(qnats.REGISTRY_BUCKET)).get("other-agent")


async def test_agent_credentials_cannot_subscribe_to_other_subjects(
    service: Client, agent: tuple[Client, Refusals]
) -> None:
    """Nor can one agent send another a job event of its own making (a cancel, say):
    what agents publish on job subjects goes to the gate, not to other agents."""
    agent_nc, refusals = agent
    forbidden = [
        "qg.evt.>",
        "qg.evt.token.*",
        "qg.rpc.ops",
        "qg.work.device.>",
        ev.ticket_notices(ev.Target.DEVICE),
        "_INBOX.>",
    ]
    received: dict[str, list[str]] = {subject: [] for subject in [*forbidden, "qg.evt.job.*"]}
    last = ev.job_subject("j2")
    last_seen = asyncio.Event()
    for subject, messages in received.items():

        async def keep(msg: Msg, messages: list[str] = messages) -> None:
            messages.append(msg.subject)
            if msg.subject == last:
                last_seen.set()

        await agent_nc.subscribe(subject, cb=keep)
    await refusals.reported(agent_nc)

    await tokens.new_admin(EventLog(service), "test")
    await EventLog(service).append(_submitted("j1"), expected_seq=0)
    await service.jetstream().publish("qg.work.device.p5", b"{}")
    await service.publish(ev.ticket_notice_subject(ev.Target.DEVICE, 5), b"")
    await service.publish("qg.rpc.ops", b"{}")
    fake = ev.JobCancelled(at=ev.utcnow(), job_id=ev.JobId("j1"), reason="spoofed")
    await agent_nc.publish(ev.job_subject("j1"), ev.encode(fake))
    await agent_nc.flush()
    # Last, a job event the agent does see: whatever was to reach it has by then.
    await EventLog(service).append(_submitted("j2"), expected_seq=0)
    await asyncio.wait_for(last_seen.wait(), 10)

    assert refusals.errors == [
        f'permissions violation for subscription to "{subject.lower()}"' for subject in forbidden
    ]
    assert received == {subject: [] for subject in forbidden} | {
        "qg.evt.job.*": [ev.job_subject("j1"), last]
    }


async def test_agent_credentials_cannot_wipe_the_log_store_or_the_registry(
    service: Client, agent: tuple[Client, Refusals]
) -> None:
    """The log store and the registry accept rollups (an object's record, a key's
    history): through the gate an agent may replace one record, not purge a stream."""
    agent_nc, refusals = agent
    js = service.jetstream()
    await logstore.store(js, "qualgent/j1/1", b"output of j1")
    registry = await js.key_value(qnats.REGISTRY_BUCKET)
    await registry.put("agent-9", b"alive")
    rollup_all = {"Nats-Rollup": "all"}

    chunk = await agent_nc.request("$O.QG_LOGS.C.x", b"junk", headers=rollup_all)
    beat = await agent_nc.request(f"$KV.QG_AGENTS.{AGENT_ID}", b"alive", headers=rollup_all)
    await logstore.store(agent_nc.jetstream(), "qualgent/j2/1", b"output of j2")

    assert b'"code":403' in chunk.data
    assert b'"seq"' in beat.data  # stored, without the rollup
    assert await logstore.fetch(js, "qualgent/j1/1") == b"output of j1"
    assert await logstore.fetch(js, "qualgent/j2/1") == b"output of j2"
    assert (await registry.get("agent-9")).value == b"alive"
    assert await refusals.reported(agent_nc) == []


async def test_a_store_from_before_authorization_keeps_its_events(tmp_path: Path) -> None:
    unauthorized = embedded.start_nats(tmp_path)
    try:
        nc = await qnats.connect(unauthorized.url, "before")
        await qnats.declare_streams(nc.jetstream())
        submitted = await EventLog(nc).append(_submitted("j1"), expected_seq=0)
        await qnats.close(nc)
    finally:
        unauthorized.stop()
    authorized = embedded.start_nats(tmp_path, agents=[GRANT])
    try:
        nc = await qnats.connect(authorized.url_as(nats_auth.SERVICE_USER), "after")
        try:
            last = await EventLog(nc).last(ev.job_subject("j1"))
        finally:
            await qnats.close(nc)
    finally:
        authorized.stop()
    assert last is not None
    assert last[0] == submitted.seq
