"""The AppWright runner with real processes, against a scripted stand-in for `npx appwright`
(tests/fixtures/appwright/npx) rather than AppWright and a device: verdicts from the exit code
and the JSON report, builds from paths and URLs, secrets masked, the process group stopped on
cancel; then through a real stack, and the CLI's checks."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from agent.runners import InstallFailed, RunnerError, process
from agent.runners.appwright import AppwrightConfig, AppwrightRunner, file_filter
from agent.worker import AgentConfig
from infra import embedded, lifecycle
from infra import events as ev
from tests.integration.test_command_runner import assert_gone, eventually, pids
from tests.stack import running_stack
from tests.unit import factories

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from agent.runners import Runner

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "appwright"
NPX = (sys.executable, str(FIXTURE / "npx"))
"""The stand-in, through this interpreter so that it needs neither PATH nor its exec bit."""
SEP = "\u203a"
"""Playwright's line reporter separates project, file and title with this."""
KEY = "bs-key-0123456789"
FAILED = (
    "checkout.spec.ts > checkout > pays with a saved card: Error: expected total 12.00, got 13.00"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the fixture project with a build at builds/v1.apk."""
    directory = shutil.copytree(FIXTURE / "project", tmp_path / "project")
    (directory / "builds").mkdir()
    (directory / "builds" / "v1.apk").write_bytes(b"APK")
    return directory


def config(project: Path, **fields: Any) -> AppwrightConfig:
    values: dict[str, Any] = {
        "project_dir": str(project),
        "projects": {"emulator": "android", "device": "ios-device"},
        "build_source": "builds/{app_version_id}.apk",
        "build_dir": str(project.parent / "downloads"),
        "npx": NPX,
        "kill_grace_s": 0.5,
    }
    return AppwrightConfig(**{**values, **fields})


def job(
    test_path: str, app_version_id: str = "v1", target: ev.Target = ev.Target.EMULATOR
) -> lifecycle.JobState:
    return lifecycle.start(
        factories.submitted(test_path=test_path, app_version_id=app_version_id, target=target)
    )


async def installed(project: Path, **fields: Any) -> AppwrightRunner:
    runner = AppwrightRunner(config(project, **fields))
    await runner.install("qualgent", "v1", "emulator")
    return runner


class Builds:
    """An HTTP server of builds on 127.0.0.1, recording what it was asked for."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.files = {"qualgent/v1.apk": b"APK" * 100_000, "qualgent/v1.2@rc:1.apk": b"RC"}
        self.requests: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path_qs)
        name = f"{request.match_info['org']}/{request.match_info['name']}"
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name])


@pytest.fixture
async def builds() -> AsyncIterator[Builds]:
    server = Builds(f"http://127.0.0.1:{embedded.free_port()}")
    app = web.Application()
    app.router.add_get("/builds/{org}/{name}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(server.url.rsplit(":", 1)[1])).start()
    yield server
    await runner.cleanup()


@pytest.mark.parametrize(
    ("test_path", "passed", "reason"),
    [
        ("tests/login.spec.ts", True, ""),
        ("./tests/search.spec.ts", True, ""),  # flaky: passed on Playwright's retry
        ("tests/checkout.spec.ts", False, FAILED),
        ("tests/cart + promo.spec.ts", True, ""),
    ],
)
async def test_the_exit_code_and_the_report_decide_the_verdict(
    project: Path, test_path: str, passed: bool, reason: str
) -> None:
    output = factories.CollectedOutput()
    outcome = await (await installed(project)).run_test(job(test_path), output)
    assert (outcome.passed, outcome.reason) == (passed, reason)
    assert outcome.duration_s > 0
    # Exactly the asked-for file ran: `login.spec.ts` alone would also run admin-login.
    assert "Running 1 test using 1 worker" in output.text
    assert f"[1/1] [android] {SEP} {test_path.removeprefix('./')} {SEP} " in output.text
    assert f"build: {project / 'builds' / 'v1.apk'}\n" in output.text, "QG_BUILD_PATH"


@pytest.mark.parametrize(
    ("test_path", "fields", "complaint"),
    [
        (
            "tests/crash.spec.ts",
            {},
            r"appwright ended with exit code 3: .* \| .*crashes the runner \| Segmentation fault"
            r" \(stand-in crash\)",
        ),
        ("tests/missing.spec.ts", {}, r"no test ran: Error: No tests found\."),
        (
            "tests/login.spec.ts",
            {"projects": {"emulator": "pixel"}},
            r'appwright wrote no report; exit code 1: Error: Project\(s\) "pixel" not found\. '
            r'Available projects: "android", "ios-device", "browserstack-android"',
        ),
    ],
)
async def test_a_run_without_a_verdict_is_an_infrastructure_error(
    project: Path, test_path: str, fields: dict[str, Any], complaint: str
) -> None:
    runner = await installed(project, **fields)
    with pytest.raises(RunnerError, match=f"^{complaint}$"):
        await runner.run_test(job(test_path), factories.CollectedOutput())


async def test_a_failed_setup_reports_no_test_and_is_never_a_pass(project: Path) -> None:
    runner = await installed(project)
    build = project / "builds" / "v1.apk"
    build.unlink()  # AppWright's setup finds no build: exit 1, a report of 0 tests
    with pytest.raises(RunnerError, match=f"^no test ran: Error: Build file not found: {build}$"):
        await runner.run_test(job("tests/login.spec.ts"), factories.CollectedOutput())


async def test_a_target_without_a_project_or_a_build_cannot_run(project: Path) -> None:
    runner = AppwrightRunner(config(project))
    complaint = r"no AppWright project for target 'browserstack' \(mapped: device, emulator\)"
    with pytest.raises(InstallFailed, match=complaint):
        await runner.install("qualgent", "v1", "browserstack")
    with pytest.raises(RunnerError, match=complaint):
        await runner.run_test(
            job("tests/a.spec.ts", target=ev.Target.BROWSERSTACK), factories.CollectedOutput()
        )
    with pytest.raises(RunnerError, match="build v1 for emulator is not installed here"):
        await runner.run_test(job("tests/login.spec.ts"), factories.CollectedOutput())
    with pytest.raises(InstallFailed, match=f"build not found: {project / 'builds' / 'v2.apk'}"):
        await runner.install("qualgent", "v2", "emulator")


async def test_an_absolute_build_source_is_used_in_place(project: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "qualgent"
    shared.mkdir(parents=True)
    (shared / "v1-device.ipa").write_bytes(b"IPA")
    runner = AppwrightRunner(
        config(
            project, build_source=str(tmp_path / "shared/{org_id}/{app_version_id}-{target}.ipa")
        )
    )
    await runner.install("qualgent", "v1", "device")
    output = factories.CollectedOutput()
    outcome = await runner.run_test(job("tests/login.spec.ts", target=ev.Target.DEVICE), output)
    assert outcome.passed
    assert f"build: {shared / 'v1-device.ipa'}\n" in output.text
    assert f"[1/1] [ios-device] {SEP} tests/login.spec.ts" in output.text


async def test_a_build_is_downloaded_once_into_the_build_dir(project: Path, builds: Builds) -> None:
    source = builds.url.replace("//", "//ci:pw@") + "/builds/{org_id}/{app_version_id}.apk?t=s3cret"
    runner = AppwrightRunner(config(project, build_source=source))
    await runner.install("qualgent", "v1", "emulator")
    await runner.install("qualgent", "v1.2@rc:1", "emulator")
    downloads = project.parent / "downloads" / "qualgent"
    assert (downloads / "v1" / "emulator" / "v1.apk").read_bytes() == builds.files[
        "qualgent/v1.apk"
    ]
    assert (downloads / "v1.2%40rc%3A1" / "emulator" / "v1.2_rc_1.apk").read_bytes() == b"RC"
    assert builds.requests == [
        "/builds/qualgent/v1.apk?t=s3cret",
        "/builds/qualgent/v1.2@rc:1.apk?t=s3cret",  # sent as %40 and %3A, decoded by the server
    ]
    output = factories.CollectedOutput()
    outcome = await runner.run_test(job("tests/login.spec.ts"), output)
    assert outcome.passed
    assert f"build: {downloads / 'v1' / 'emulator' / 'v1.apk'}\n" in output.text


async def test_a_download_that_fails_names_the_status_but_no_credentials(
    project: Path, builds: Builds
) -> None:
    source = builds.url.replace("//", "//ci:pw@") + "/builds/{org_id}/{app_version_id}.apk?t=s3cret"
    runner = AppwrightRunner(config(project, build_source=source))
    with pytest.raises(InstallFailed) as caught:
        await runner.install("qualgent", "v404", "emulator")
    assert str(caught.value) == f"HTTP 404 Not Found from {builds.url}/builds/qualgent/v404.apk"
    assert not list((project.parent / "downloads").rglob("*.*")), "no partial file is left"
    closed = AppwrightRunner(config(project, build_source="http://127.0.0.1:9/{app_version_id}"))
    with pytest.raises(InstallFailed, match=r"^cannot download http://127.0.0.1:9/v1: cannot"):
        await closed.install("qualgent", "v1", "emulator")


@pytest.mark.parametrize("value", ["..", ".", "../../outside", "a/../../b", "", "x\0y"])
async def test_a_placeholder_value_cannot_leave_the_build_dir(
    project: Path, builds: Builds, value: str
) -> None:
    before = sorted(project.parent.parent.rglob("*"))
    for source in ("builds/{app_version_id}", builds.url + "/builds/{org_id}/{app_version_id}"):
        runner = AppwrightRunner(config(project, build_source=source))
        with pytest.raises(InstallFailed, match="cannot name a build"):
            await runner.install("qualgent", value, "emulator")
        with pytest.raises(InstallFailed, match="cannot name a build"):
            await runner.install(value, "v1", "emulator")
    assert sorted(project.parent.parent.rglob("*")) == before
    assert builds.requests == []


async def test_a_hidden_looking_value_stays_a_visible_directory_in_the_build_dir(
    project: Path, builds: Builds
) -> None:
    builds.files[".hidden/v1.apk"] = b"H"
    runner = AppwrightRunner(
        config(project, build_source=builds.url + "/builds/{org_id}/{app_version_id}.apk")
    )
    await runner.install(".hidden", "v1", "emulator")
    assert (project.parent / "downloads" / "%2Ehidden" / "v1" / "emulator" / "v1.apk").exists()


async def test_secrets_are_masked_in_the_output_and_the_reason(project: Path) -> None:
    (project / "tests" / "auth.spec.ts").write_text(
        f'// qg: fail "BrowserStack rejected key {KEY}"\ntest("signs in", async () => {{}});\n'
    )
    env = {"BROWSERSTACK_USERNAME": "qa-bot", "BROWSERSTACK_ACCESS_KEY": KEY}
    runner = await installed(project, env=env)
    output = factories.CollectedOutput()
    outcome = await runner.run_test(job("tests/auth.spec.ts"), output)
    assert outcome.reason == "auth.spec.ts > signs in: Error: BrowserStack rejected key ***"
    # The stand-in prints the key in two writes 0.2 s apart: two reads of the pipe.
    assert "BrowserStack session for ***, key *** accepted\n" in output.text
    assert KEY[:8] not in output.text
    assert "qa-bot" not in output.text


def test_a_secret_split_anywhere_across_chunks_is_masked() -> None:
    text = b"user=qa-bot key=bs-key-0123456789 again bs-key-0123456789."
    expected = b"user=*** key=*** again ***."
    for cut in range(len(text) + 1):
        for second in range(cut, len(text) + 1):
            masker = process.Masker(["bs-key-0123456789", "qa-bot", ""])
            chunks = (text[:cut], text[cut:second], text[second:])
            out = b"".join(masker.feed(c) for c in chunks) + masker.flush()
            assert out == expected, (cut, second)


@pytest.mark.parametrize(
    ("test_path", "argument"),
    [
        ("tests/login.spec.ts", r"/(?:^|\/)tests\/login\.spec\.ts$/"),
        ("./tests/c++ x.spec.ts", r"/(?:^|\/)tests\/c\+\+\x20x\.spec\.ts$/"),
        ("/abs/a.spec.ts", r"/^\/abs\/a\.spec\.ts$/"),
    ],
)
def test_the_test_path_becomes_an_anchored_escaped_regex_without_spaces(
    test_path: str, argument: str
) -> None:
    assert file_filter(test_path) == argument


async def test_cancelling_a_test_kills_its_whole_group(project: Path, tmp_path: Path) -> None:
    (project / "tests" / "slow.spec.ts").write_text(
        '// qg: sleep 30\ntest("waits", async () => {});\n'
    )
    pid_file = tmp_path / "pids"
    runner = await installed(project, env={"STANDIN_PIDS": str(pid_file)})
    running = asyncio.create_task(
        runner.run_test(job("tests/slow.spec.ts"), factories.CollectedOutput())
    )
    await eventually(lambda: len(pids(pid_file)) == 2)
    started = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert time.monotonic() - started < 2
    await assert_gone(pid_file, 2)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"projects": {}}, "no target is mapped"),
        ({"projects": {"phone": "android"}}, "unknown target 'phone'"),
        ({"projects": {"emulator": "my android"}}, "bad AppWright project name 'my android'"),
        ({"projects": {"emulator": "--list"}}, "bad AppWright project name '--list'"),
        ({"build_source": "builds/app.apk"}, "must name {app_version_id}"),
        ({"build_source": "builds/{build}.apk"}, "unknown placeholder {build}"),
        ({"build_source": "ftp://h/{app_version_id}"}, "path or an http(s) URL, not ftp:"),
        ({"npx": ()}, "the npx command is empty"),
    ],
)
def test_a_bad_configuration_is_refused_when_built(
    project: Path, fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        config(project, **fields)


async def test_passing_and_failing_appwright_tests_through_the_stack_with_one_download(
    qg_servers: embedded.Servers, project: Path, builds: Builds
) -> None:
    source = builds.url + "/builds/{org_id}/{app_version_id}.apk"
    runner = AppwrightRunner(config(project, build_source=source))
    agents: list[tuple[AgentConfig, Runner]] = [
        (AgentConfig(agent_id=ev.AgentId("aw-0"), targets=(ev.Target.EMULATOR,)), runner)
    ]
    paths = ("tests/login.spec.ts", "tests/checkout.spec.ts", "tests/search.spec.ts")
    async with running_stack(qg_servers, []) as stack:
        jobs = [await stack.submit(app_version_id="v1", test_path=path) for path in paths]
        await stack.settled()
    # The agent starts only now, so it finds all three pending in one batch.
    async with running_stack(qg_servers, agents) as stack:
        views = await stack.wait_all([j.job_id for j in jobs])
        await stack.settled()
        _, batches = await stack.request("GET", "/batches")
        async with stack.session.get(f"{stack.api_url}/jobs/{jobs[1].job_id}/logs") as response:
            log = await response.text()
    assert [(v.status, v.reason) for v in views] == [
        ("passed", None),
        ("failed", FAILED),
        ("passed", None),
    ]
    assert builds.requests == ["/builds/qualgent/v1.apk"]
    assert [b["installs"] for b in batches["batches"]] == [1]
    assert f"[1/1] [android] {SEP} tests/checkout.spec.ts {SEP} pays with a saved card" in log
    assert "Error: expected total 12.00, got 13.00" in log


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (
            ["--project", "emulator:android"],
            "--project takes TARGET=NAME once per target (emulator=android), "
            "not 'emulator:android'",
        ),
        (
            ["--project", "phone=android"],
            "bad AppWright configuration: unknown target 'phone'; "
            "known: browserstack, device, emulator",
        ),
        (
            ["--project", "emulator=android", "--target", "device"],
            "--target device has no --project TARGET=NAME",
        ),
        (
            ["--project", "emulator=android", "--build-source", "builds/app.apk"],
            "bad AppWright configuration: the build source 'builds/app.apk' must name "
            "{app_version_id}",
        ),
    ],
)
def test_the_agent_command_refuses_a_bad_appwright_configuration_in_one_line(
    arguments: list[str], complaint: str
) -> None:
    command = [
        *("agent", "--target", "emulator", "--runner", "appwright"),
        *("--appwright-dir", str(FIXTURE / "project"), "--build-source", "b/{app_version_id}"),
        *arguments,
    ]
    result = subprocess.run(
        [sys.executable, "-m", "cli", *command],
        capture_output=True,
        text=True,
        env={**os.environ, "QG_NATS_URL": "nats://127.0.0.1:9"},
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"qgjob: error: {complaint}\n"
