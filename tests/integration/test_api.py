"""The HTTP API against real servers: validation, idempotency, bulk, reads."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from infra import nats as qnats
from tests.stack import JOB, Stack, running_stack

if TYPE_CHECKING:
    from infra import embedded


async def stream_size(servers: embedded.Servers) -> int:
    nc = await qnats.connect(servers.nats_url, "test")
    try:
        return (await nc.jetstream().stream_info("QG_EVENTS")).state.messages
    finally:
        await nc.close()


async def test_a_job_is_readable_the_moment_post_returns(stack: Stack) -> None:
    status, body = await stack.request("POST", "/jobs", {**JOB, "priority": "urgent"})
    assert status == 201
    job = await stack.job(body["job_id"])
    assert (job.status, job.priority, job.events) == ("queued", 5, ["job.submitted"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"target": "phone"}, "target"),
        ({"priority": 9}, "priority"),
        ({"priority": "soon"}, "priority"),
        ({"test_path": "a.js; rm -rf /"}, "test_path"),
        ({"test_path": "--config=evil.js"}, "test_path"),
        ({"org_id": ""}, "org_id"),
        ({"retries": -1}, "retries"),
        ({"colour": "red"}, "colour"),
        ({"org_id": None}, "org_id"),
    ],
)
async def test_bad_input_is_422_naming_the_field_and_appends_nothing(
    stack: Stack, qg_servers: embedded.Servers, change: dict[str, object], field: str
) -> None:
    before = await stream_size(qg_servers)
    status, body = await stack.request("POST", "/jobs", {**JOB, **change})
    assert status == 422, body
    assert body["field"] == field
    assert await stream_size(qg_servers) == before


async def test_a_missing_field_and_a_bad_bulk_item_are_named(stack: Stack) -> None:
    status, body = await stack.request(
        "POST", "/jobs", {k: v for k, v in JOB.items() if k != "target"}
    )
    assert (status, body["field"]) == (422, "target")
    status, body = await stack.request("POST", "/jobs", {"jobs": [JOB, {**JOB, "priority": 0}]})
    assert (status, body["field"]) == (422, "jobs[1].priority")


async def test_not_json_is_400(stack: Stack) -> None:
    async with stack.session.post(f"{stack.api_url}/jobs", data=b"{nope") as response:
        assert response.status == 400
        assert "JSON" in (await response.json())["error"]


async def test_unknown_jobs_are_404(stack: Stack) -> None:
    for job_id in ("j00000000000000000000", "not-an-id", "j>"):
        status, body = await stack.request("GET", f"/jobs/{job_id}")
        assert status == 404, body
        assert "not found" in body["error"]


async def test_a_retried_submit_with_the_same_key_returns_the_same_job(stack: Stack) -> None:
    job = {**JOB, "idempotency_key": "ci-run-7-a"}
    first_status, first = await stack.request("POST", "/jobs", job)
    again_status, again = await stack.request("POST", "/jobs", job)
    assert (first_status, again_status) == (201, 200)
    assert first["job_id"] == again["job_id"]
    _, bulk = await stack.request("POST", "/jobs", {"jobs": [job, {**JOB, "idempotency_key": "b"}]})
    assert bulk["jobs"][0]["job_id"] == first["job_id"], bulk
    _, page = await stack.request("GET", "/jobs?limit=10")
    await stack.settled()
    _, page = await stack.request("GET", "/jobs?limit=10")
    assert len(page["jobs"]) == 2


async def test_a_key_names_its_job_across_a_restart_and_beyond_the_duplicate_window(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qnats, "DUPLICATE_WINDOW_S", 0.5)
    job = {**JOB, "idempotency_key": "ci-run-8"}
    async with running_stack(qg_servers, []) as stack:
        first_status, first = await stack.request("POST", "/jobs", job)
    await asyncio.sleep(1.0)  # past the window: JetStream's dedup has forgotten the id
    async with running_stack(qg_servers, []) as stack:  # and the orchestrator restarted
        again_status, again = await stack.request("POST", "/jobs", job)
        await stack.settled()
        _, page = await stack.request("GET", "/jobs")
    assert (first_status, again_status) == (201, 200)
    assert again["job_id"] == first["job_id"]
    assert len(page["jobs"]) == 1


async def test_bulk_submit_keeps_request_order_and_groups_by_build(stack: Stack) -> None:
    jobs = [
        {**JOB, "test_path": f"tests/t{i}.spec.js", "app_version_id": f"v{i % 2}"}
        for i in range(10)
    ]
    status, body = await stack.request("POST", "/jobs", {"jobs": jobs})
    assert status == 201
    assert [j["test_path"] for j in body["jobs"]] == [j["test_path"] for j in jobs]
    assert len({j["batch_id"] for j in body["jobs"]}) == 2


async def test_job_lists_filter_and_page(stack: Stack) -> None:
    for i in range(5):
        await stack.submit(app_version_id="v1", test_path=f"tests/p{i}.spec.js", target="device")
    await stack.submit(app_version_id="v2", test_path="tests/other.spec.js")
    await stack.settled()
    _, first = await stack.request("GET", "/jobs?app_version_id=v1&limit=3")
    assert len(first["jobs"]) == 3
    assert first["next_cursor"]
    _, rest = await stack.request(
        "GET", f"/jobs?app_version_id=v1&limit=3&cursor={first['next_cursor']}"
    )
    paths = [j["test_path"] for j in first["jobs"] + rest["jobs"]]
    assert sorted(paths) == [f"tests/p{i}.spec.js" for i in range(5)]
    _, device = await stack.request("GET", "/jobs?target=device&status=queued")
    assert len(device["jobs"]) == 5
    status, body = await stack.request("GET", "/jobs?status=sleeping")
    assert (status, body["field"]) == (422, "status")


async def test_queues_show_pending_per_target_and_band(stack: Stack) -> None:
    await stack.submit(app_version_id="v1", test_path="tests/a.spec.js", priority=5)
    await stack.submit(app_version_id="v1", test_path="tests/b.spec.js", priority=5)
    await stack.submit(
        app_version_id="v2", test_path="tests/c.spec.js", target="device", priority=1
    )
    await stack.settled()
    _, queue = await stack.request("GET", "/queues")
    bands = {(b["target"], b["band"]): b["pending"] for b in queue["bands"]}
    assert bands == {("emulator", 5): 2, ("device", 1): 1}
    assert [b["band"] for b in queue["open_batches"]] == [5, 1], "the highest band first"


async def test_cancel_a_queued_job_then_cancelling_again_is_409(stack: Stack) -> None:
    job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
    status, body = await stack.request("DELETE", f"/jobs/{job.job_id}")
    assert (status, body["status"]) == (200, "cancelled")
    status, body = await stack.request("DELETE", f"/jobs/{job.job_id}")
    assert status == 409
    assert "already cancelled" in body["error"]


async def test_cancel_a_whole_batch_or_app_version_in_one_request(stack: Stack) -> None:
    v1 = [await stack.submit(app_version_id="v1", test_path=f"t{i}.js") for i in range(3)]
    on_device = await stack.submit(app_version_id="v1", test_path="d.js", target="device")
    other = await stack.submit(app_version_id="v2", test_path="t.js")
    await stack.request("DELETE", f"/jobs/{v1[0].job_id}")

    status, body = await stack.request("POST", "/jobs:cancel", {"batch_id": v1[1].batch_id})
    assert status == 200, body
    assert {job["job_id"] for job in body["cancelled"]} == {v1[1].job_id, v1[2].job_id}
    assert body["already_finished"] == 0, "an already cancelled job is not matched again"

    body = (
        await stack.request("POST", "/jobs:cancel", {"org_id": "qualgent", "app_version_id": "v1"})
    )[1]
    assert [job["job_id"] for job in body["cancelled"]] == [on_device.job_id]
    assert (await stack.job(other.job_id)).status == "queued", "another build is untouched"

    status, body = await stack.request("POST", "/jobs:cancel", {"app_version_id": "v1"})
    assert (status, body["field"]) == (422, "batch_id")


async def test_every_error_is_json_even_from_the_router(stack: Stack) -> None:
    status, body = await stack.request("GET", "/nowhere")
    assert (status, body["error"]) == (404, "Not Found")
    status, body = await stack.request("PUT", "/jobs")
    assert status == 405
    status, body = await stack.request("GET", "/jobs?cursor=abc")
    assert (status, body["field"]) == (422, "cursor")
