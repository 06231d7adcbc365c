"""Read models: a projector killed mid-stream and restarted ends where one that never
stopped does, and both equal the live tables."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from infra import db, embedded
from infra import nats as qnats
from projections.app import read_models
from projections.runner import Projection, ProjectionRunner
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from nats.js import JetStreamContext

TABLES = {"jobs": "job_id", "batches": "batch_id", "agents": "agent_id"}


async def table(pool: db.Pool, name: str) -> list[tuple[object, ...]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT * FROM {name} ORDER BY {TABLES[name]}")
    return [tuple(row) for row in rows]


async def schema_pool(url: str, schema: str) -> db.Pool:
    admin = await db.create_pool(url)
    async with admin.acquire() as conn:
        await db.migrate(conn, schema)
    await admin.close()
    return await db.create_pool(url, schema)


async def kill_mid_stream(servers: embedded.Servers, schema: str, name: str, at: int) -> None:
    """Run the projector in a process and SIGKILL it once it has committed sequence `at`
    but not yet acknowledged it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.projector_process",
        *(servers.nats_url, servers.database_url, schema, name, str(at)),
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert await proc.stdout.readline() == b"frozen\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def rebuild(js: JetStreamContext, pool: db.Pool, schema: str, projection: Projection) -> None:
    runner = ProjectionRunner(js, pool, projection, durable=f"{schema}-{projection.name}")
    await runner.run(asyncio.Event(), catch_up=True)


async def test_a_killed_projector_resumes_to_the_same_tables(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, simulated_agents(2)) as stack:
        jobs = [
            await stack.submit(
                app_version_id=f"v{i % 3}", test_path=f"tests/t{i}.spec.js", priority=1 + i % 5
            )
            for i in range(24)
        ]
        await stack.wait_all([j.job_id for j in jobs])
        await stack.settled()
    nc = await qnats.connect(qg_servers.nats_url, "test")
    js = nc.jetstream()
    live = await db.create_pool(qg_servers.database_url)
    halfway = (await js.stream_info("QG_EVENTS")).state.last_seq // 2
    for projection in read_models():
        # The stack's projectors stopped while agents were still appending AgentStopped:
        # restarted, they resume from their checkpoints.
        await ProjectionRunner(js, live, projection).run(asyncio.Event(), catch_up=True)
        whole = await schema_pool(qg_servers.database_url, "whole")
        crashed = await schema_pool(qg_servers.database_url, "crashed")
        await rebuild(js, whole, "whole", projection)
        await kill_mid_stream(qg_servers, "crashed", projection.name, halfway)
        killed_at = await table(crashed, projection.name)
        await rebuild(js, crashed, "crashed", projection)
        name = projection.name
        assert killed_at != await table(crashed, name), "the kill came before the end"
        assert await table(crashed, name) == await table(whole, name) == await table(live, name)
        for pool in (whole, crashed):
            await pool.close()
    await live.close()
    await nc.close()


async def test_a_message_that_is_not_an_event_is_parked_and_the_projectors_go_on(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, []) as stack:
        before = await stack.submit(app_version_id="v1", test_path="before.js")
        nc = await qnats.connect(qg_servers.nats_url, name="qgjob-test")
        try:
            ack = await nc.jetstream().publish(
                f"qg.evt.job.{before.job_id}", b'{"type": "nonsense"'
            )
        finally:
            await qnats.close(nc)
        after = await stack.submit(app_version_id="v1", test_path="after.js")
        await stack.settled()
        _, page = await stack.request("GET", "/jobs")
        async with stack.session.get(stack.api_url + "/metrics") as response:
            metrics = await response.text()
    pool = await db.create_pool(qg_servers.database_url)
    try:
        async with pool.acquire() as conn:
            parked = await conn.fetch("SELECT stream_seq, subject FROM rejected_events")
    finally:
        await pool.close()
    assert {job["job_id"] for job in page["jobs"]} == {before.job_id, after.job_id}
    assert [tuple(row) for row in parked] == [(ack.seq, f"qg.evt.job.{before.job_id}")]
    assert "qgjob_events_rejected 1.0" in metrics
