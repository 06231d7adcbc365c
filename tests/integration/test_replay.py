"""Ops replay and verify: read models rebuilt from the stream into fresh tables and
swapped in atomically while the API keeps answering; verify diffs them with the live ones."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg

from infra import db
from infra import events as ev
from infra import nats as qnats
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from infra import embedded
    from tests.stack import Stack


async def submit_seq(servers: embedded.Servers, job_id: str) -> int:
    """The stream sequence of a job's `JobSubmitted` event."""
    nc = await qnats.connect(servers.nats_url, name="qgjob-test")
    try:
        msg = await nc.jetstream().get_msg(
            ev.EVENTS_STREAM, subject=ev.job_subject(job_id), seq=1, next=True
        )
        assert msg.seq is not None
        return msg.seq
    finally:
        await qnats.close(nc)


def by_model(report: dict[str, Any], key: str) -> dict[str, Any]:
    return {p["projection"]: p[key] for p in report["projections"]}


async def finished_jobs(stack: Stack, count: int) -> list[str]:
    ids = [
        (await stack.submit(app_version_id=f"v{i % 2}", test_path=f"t{i}.js")).job_id
        for i in range(count)
    ]
    await stack.wait_all(ids)
    await stack.settled()
    return ids


async def test_verify_finds_a_tampered_row_and_replay_repairs_it(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, simulated_agents(2)) as stack:
        ids = await finished_jobs(stack, 6)
        status, healthy = await stack.request("POST", "/ops/verify")
        assert status == 200, healthy
        assert by_model(healthy, "differing") == {"jobs": 0, "batches": 0, "agents": 0}
        assert by_model(healthy, "rows")["jobs"] == 6

        conn = await asyncpg.connect(qg_servers.database_url)
        try:
            await conn.execute(
                f"UPDATE {db.DEFAULT_SCHEMA}.jobs SET status = 'failed' WHERE job_id = $1", ids[0]
            )
            _, tampered = await stack.request("POST", "/ops/verify", {"projection": "jobs"})
            assert by_model(tampered, "differing") == {"jobs": 2}, "the live row and the true one"

            status, replayed = await stack.request("POST", "/ops/replay")
            assert status == 200, replayed
            assert by_model(replayed, "rows") == {"jobs": 6, "batches": 2, "agents": 2}
            assert (
                await conn.fetchval(
                    f"SELECT status FROM {db.DEFAULT_SCHEMA}.jobs WHERE job_id = $1", ids[0]
                )
                == "passed"
            )
        finally:
            await conn.close()

        # The live projectors carry on from the swapped-in checkpoint.
        later = await stack.submit(app_version_id="v9", test_path="later.js")
        await stack.wait_all([later.job_id])
        await stack.settled()
        _, page = await stack.request("GET", "/jobs?limit=100")
        assert len(page["jobs"]) == 7
        _, after = await stack.request("POST", "/ops/verify")
        assert by_model(after, "differing") == {"jobs": 0, "batches": 0, "agents": 0}


async def test_readers_see_the_old_or_the_new_tables_during_a_replay_never_a_half(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, []) as stack:
        await stack.request(
            "POST",
            "/jobs",
            {
                "jobs": [
                    {
                        "org_id": "o",
                        "app_version_id": "v1",
                        "test_path": f"t{i}.js",
                        "target": "emulator",
                    }
                    for i in range(300)
                ]
            },
        )
        await stack.settled()
        seen: list[int] = []
        replay = asyncio.create_task(stack.request("POST", "/ops/replay"))
        while not replay.done():
            status, body = await stack.request("GET", "/queues")
            assert status == 200
            seen.append(sum(band["pending"] for band in body["bands"]))
        status, _ = await replay
    assert status == 200
    assert set(seen) == {300}, "every read during the replay saw all 300 queued jobs"


async def test_replay_until_a_sequence_keeps_that_moment_in_its_own_schema(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, []) as stack:
        jobs = [await stack.submit(app_version_id="v1", test_path=f"t{i}.js") for i in range(5)]
        await stack.settled()
        third = await submit_seq(qg_servers, jobs[2].job_id)
        status, report = await stack.request("POST", "/ops/replay", {"until": third})
        assert status == 200, report
        assert report["schema"] == f"qg_rebuild_{third}"
        _, page = await stack.request("GET", "/jobs")
    assert by_model(report, "rows")["jobs"] == 3
    assert len(page["jobs"]) == 5, "the live read models are left alone"


async def test_unknown_read_models_and_options_are_refused(stack: Stack) -> None:
    await stack.settled()
    status, body = await stack.request("POST", "/ops/replay", {"projection": "nope"})
    assert (status, body["field"]) == (422, "projection")
    assert "nope" in body["error"]
    status, body = await stack.request("POST", "/ops/verify", {"until": 3})
    assert (status, body["field"]) == (422, "until")
