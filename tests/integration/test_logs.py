"""Test output: stored per attempt in the object store, named by the final event,
served by `GET /jobs/{id}/logs`, and streamed live with `follow=true`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent.runners.command import CommandConfig, CommandRunner
from agent.worker import AgentConfig
from infra import events as ev
from infra import logstore
from tests.integration.test_command_runner import script
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from pathlib import Path

    from agent.runners import Runner
    from infra import embedded
    from tests.stack import Stack


async def text(stack: Stack, path: str) -> tuple[int, str, dict[str, str]]:
    async with stack.session.get(stack.api_url + path) as response:
        return response.status, await response.text(), dict(response.headers)


def command_agent(test: str) -> Runner:
    return CommandRunner(CommandConfig(test=(test, "{test_path}")))


def agent_config(log_limit_bytes: int = logstore.DEFAULT_LIMIT_BYTES) -> AgentConfig:
    return AgentConfig(
        agent_id=ev.AgentId("cmd-0"),
        targets=(ev.Target.EMULATOR,),
        log_limit_bytes=log_limit_bytes,
    )


async def test_a_finished_job_serves_its_output_and_names_it_in_its_final_event(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, simulated_agents(1)) as stack:
        job = await stack.submit(app_version_id="v1", test_path="tests/login.spec.js")
        [done] = await stack.wait_all([job.job_id])
        status, body, headers = await text(stack, f"/jobs/{job.job_id}/logs")
    assert done.log_ref == f"qualgent/{job.job_id}/1"
    assert status == 200
    assert headers["Qg-Job-Status"] == "passed"
    assert body.startswith("$ simulated test tests/login.spec.js on emulator\n  ok ")


async def test_each_attempt_keeps_its_own_log(qg_servers: embedded.Servers, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    test = script(
        tmp_path, "t.sh", f'echo run >> {counter}; echo "run $(wc -l < {counter})"; exit 1'
    )
    async with running_stack(qg_servers, [(agent_config(), command_agent(test))]) as stack:
        job = await stack.submit(app_version_id="v1", test_path="t.spec.js", retries=1)
        [done] = await stack.wait_all([job.job_id])
        first = await text(stack, f"/jobs/{job.job_id}/logs?attempt=1")
        latest = await text(stack, f"/jobs/{job.job_id}/logs")
        missing = await text(stack, f"/jobs/{job.job_id}/logs?attempt=3")
    assert (done.status, done.attempt) == ("failed", 2)
    assert first[1] == "run 1\n"
    assert (latest[1], latest[2]["Qg-Attempt"]) == ("run 2\n", "2")
    assert missing[0] == 404


async def test_following_streams_output_while_the_test_runs_and_ends_with_it(
    qg_servers: embedded.Servers, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    test = script(
        tmp_path, "t.sh", f"echo first; while [ ! -e {go} ]; do sleep 0.02; done; echo second"
    )
    async with running_stack(qg_servers, [(agent_config(), command_agent(test))]) as stack:
        job = await stack.submit(app_version_id="v1", test_path="t.spec.js")
        url = f"{stack.api_url}/jobs/{job.job_id}/logs?follow=true"
        received: list[bytes] = []
        async with stack.session.get(url) as response:
            assert response.status == 200
            async with asyncio.timeout(30):
                # The first line arrives while the test still waits for `go`.
                while b"first\n" not in b"".join(received):
                    received.append(await response.content.readany())
                assert not go.exists()
                go.touch()
                received.append(await response.content.read())
        [done] = await stack.wait_all([job.job_id])
    assert b"".join(received) == b"first\nsecond\n"
    assert done.status == "passed"


async def test_output_over_the_limit_keeps_its_start_and_end_and_says_what_was_dropped(
    qg_servers: embedded.Servers, tmp_path: Path
) -> None:
    test = script(
        tmp_path, "t.sh", "echo START; head -c 50000 /dev/zero | tr '\\0' x; echo; echo END"
    )
    config = agent_config(log_limit_bytes=4000)
    async with running_stack(qg_servers, [(config, command_agent(test))]) as stack:
        job = await stack.submit(app_version_id="v1", test_path="t.spec.js")
        await stack.wait_all([job.job_id])
        _, body, _ = await text(stack, f"/jobs/{job.job_id}/logs")
    assert body.startswith("START\nxxx")
    assert body.endswith("xxx\nEND\n")
    assert "[... 46011 bytes of output dropped (size limit) ...]" in body
    assert len(body) < 4100
