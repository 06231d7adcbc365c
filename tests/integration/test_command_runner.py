"""The command runner with real processes: verdicts from exit codes, one install per batch,
the whole process group stopped on timeout or cancel; the last ones through a real stack."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from agent.runners import InstallFailed, RunnerError
from agent.runners.command import CommandConfig, CommandRunner
from agent.worker import AgentConfig
from infra import events as ev
from infra import lifecycle
from tests.stack import running_stack
from tests.unit import factories

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.runners import Runner
    from infra import embedded


def script(directory: Path, name: str, body: str) -> str:
    """A bash script in `directory`; returns its path."""
    path = directory / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)
    return str(path)


def job(test_path: str = "tests/a.spec.js") -> lifecycle.JobState:
    return lifecycle.start(factories.submitted(test_path=test_path))


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (nobody may reap orphans here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids(pid_file: Path) -> list[int]:
    return [int(line) for line in pid_file.read_text().split()] if pid_file.exists() else []


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.02)


async def assert_gone(pid_file: Path, count: int) -> None:
    started = pids(pid_file)
    assert len(started) == count
    await eventually(lambda: not any(alive(pid) for pid in started))


def agents(runner: Runner, max_attempts: int = 3) -> list[tuple[AgentConfig, Runner]]:
    config = AgentConfig(
        agent_id=ev.AgentId("cmd-0"), targets=(ev.Target.EMULATOR,), max_attempts=max_attempts
    )
    return [(config, runner)]


async def test_exit_codes_decide_the_verdict_and_the_output_gives_the_reason(
    tmp_path: Path,
) -> None:
    test = script(
        tmp_path, "t.sh", 'echo "$GREETING from $PWD"; echo "$1" > arg; exit "${1//[!0-9]/}"'
    )
    runner = CommandRunner(
        CommandConfig(test=(test, "{test_path}"), workdir=str(tmp_path), env={"GREETING": "hi"})
    )
    output = factories.CollectedOutput()
    passed = await runner.run_test(job("tests/0.spec.js"), output)
    failed = await runner.run_test(job("tests/3; rm -rf x.spec.js"), factories.CollectedOutput())
    assert (passed.passed, passed.reason) == (True, "")
    assert output.text == f"hi from {tmp_path}\n", "the output streams to the attempt's log"
    assert (failed.passed, failed.reason) == (False, f"exit code 3: hi from {tmp_path}")
    assert (tmp_path / "arg").read_text() == "tests/3; rm -rf x.spec.js\n", "one argument"
    assert failed.duration_s > 0


@pytest.mark.parametrize(("signum", "named"), [(11, "SIGSEGV"), (40, "signal 40")])
async def test_a_test_killed_by_a_signal_fails_with_the_signal_named(
    tmp_path: Path, signum: int, named: str
) -> None:
    test = script(tmp_path, "t.sh", f"echo crashing; kill -{signum} $$")
    runner = CommandRunner(CommandConfig(test=(test,)))
    outcome = await runner.run_test(job(), factories.CollectedOutput())
    assert (outcome.passed, outcome.reason) == (False, f"killed by {named}: crashing")


async def test_output_is_bounded_and_the_truncation_noted(tmp_path: Path) -> None:
    install = script(
        tmp_path, "i.sh", "head -c 100000 /dev/zero | tr '\\0' x; echo; echo bye; exit 7"
    )
    runner = CommandRunner(CommandConfig(install=(install,), test=("true",), output_limit_bytes=64))
    with pytest.raises(InstallFailed) as caught:
        await runner.install("o", "v1", "emulator")
    message = str(caught.value)
    assert message.startswith("exit code 7: [99941 bytes of output dropped] | xxx")
    assert message.endswith("| bye")


async def test_a_command_that_cannot_start_is_an_infrastructure_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    runner = CommandRunner(CommandConfig(install=(missing, "{app_version_id}"), test=(missing,)))
    with pytest.raises(InstallFailed, match="cannot start"):
        await runner.install("o", "v1", "emulator")
    with pytest.raises(RunnerError, match="cannot start"):
        await runner.run_test(job(), factories.CollectedOutput())


async def test_cancelling_a_test_kills_its_whole_group_even_when_it_ignores_sigterm(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pids"
    test = script(
        tmp_path,
        "t.sh",
        f"trap '' TERM; sleep 30 & echo $! >> {pid_file}; echo $$ >> {pid_file}; wait",
    )
    runner = CommandRunner(CommandConfig(test=(test,), kill_grace_s=0.3))
    running = asyncio.create_task(runner.run_test(job(), factories.CollectedOutput()))
    await eventually(lambda: len(pids(pid_file)) == 2)
    started = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert 0.3 <= time.monotonic() - started < 2, "SIGTERM ignored, SIGKILL after the grace"
    await assert_gone(pid_file, 2)


async def test_passing_and_failing_tests_through_the_stack_with_one_install(
    qg_servers: embedded.Servers, tmp_path: Path
) -> None:
    installs = tmp_path / "installs"
    install = script(tmp_path, "i.sh", f'echo "$1 $2" >> {installs}')
    test = script(
        tmp_path, "t.sh", 'case "$1" in *fail*) echo "expected 2, got 3" >&2; exit 1;; esac'
    )
    runner = CommandRunner(
        CommandConfig(install=(install, "{app_version_id}", "{target}"), test=(test, "{test_path}"))
    )
    async with running_stack(qg_servers, []) as stack:
        jobs = [
            await stack.submit(app_version_id="v1", test_path=path)
            for path in ("tests/a.spec.js", "tests/b fail.spec.js", "tests/c.spec.js")
        ]
        await stack.settled()
    # The agent starts only now, so it finds all three pending in one batch.
    async with running_stack(qg_servers, agents(runner)) as stack:
        views = await stack.wait_all([j.job_id for j in jobs])
        await stack.settled()
        _, batches = await stack.request("GET", "/batches")
    assert [(v.status, v.reason) for v in views] == [
        ("passed", None),
        ("failed", "exit code 1: expected 2, got 3"),
        ("passed", None),
    ]
    assert installs.read_text() == "v1 emulator\n"
    assert [b["installs"] for b in batches["batches"]] == [1]


async def test_a_test_over_its_timeout_is_killed_and_retried_until_dead(
    qg_servers: embedded.Servers, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    test = script(
        tmp_path, "t.sh", f"sleep 30 & echo $! >> {pid_file}; echo $$ >> {pid_file}; wait"
    )
    runner = CommandRunner(CommandConfig(test=(test,), kill_grace_s=1))
    async with running_stack(qg_servers, agents(runner, max_attempts=2)) as stack:
        submitted = await stack.submit(app_version_id="v1", test_path="t.spec.js", timeout_s=1)
        [view] = await stack.wait_all([submitted.job_id])
    assert view.status == "dead"
    assert view.events.count("job.errored") == 2
    assert view.events.count("job.retried") == 1
    assert view.reason == "test timed out after 1 s (attempt limit)"
    assert [(a.attempt, a.outcome, a.reason) for a in view.attempts] == [
        (1, "errored", "test timed out after 1 s"),
        (2, "errored", "test timed out after 1 s"),
    ]
    await assert_gone(pid_file, 4)


async def test_an_install_failure_errors_the_batch_until_its_jobs_are_dead(
    qg_servers: embedded.Servers, tmp_path: Path
) -> None:
    install = script(tmp_path, "i.sh", "echo 'adb: device offline' >&2; exit 7")
    runner = CommandRunner(CommandConfig(install=(install,), test=("true",)))
    async with running_stack(qg_servers, agents(runner)) as stack:
        jobs = [await stack.submit(app_version_id="v1", test_path=f"t{i}.spec.js") for i in (1, 2)]
        views = await stack.wait_all([j.job_id for j in jobs])
    for view in views:
        assert view.status == "dead"
        assert view.events.count("job.errored") == 3
        first, second, third = view.attempts
        assert first.ended_at is not None
        assert second.ended_at is not None
        backoff = AgentConfig(agent_id=ev.AgentId("x"), targets=()).backoff
        # Each retry ran only after its backoff: at least half the exponential step.
        assert (second.assigned_at - first.ended_at).total_seconds() >= backoff.base_s / 2
        assert (third.assigned_at - second.ended_at).total_seconds() >= backoff.base_s
        assert "job.started" not in view.events
        assert view.reason == "install failed: exit code 7: adb: device offline (attempt limit)"
