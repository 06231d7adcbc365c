"""The GitHub Action's own script (`.github/action/run-tests.sh`, which `action.yml`
runs) against a live `qgjob up`, with an agent that runs real test scripts through the
command runner: the exit code, the JUnit report, the step summary and one install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.acceptance.conftest import QGJOB, Up, start_up

if TYPE_CHECKING:
    from collections.abc import Iterator

ACTION_SCRIPT = Path(__file__).parents[2] / ".github" / "action" / "run-tests.sh"
TESTS = {
    "login.sh": 'echo "logged in as $USER_NAME"',
    "cart.sh": 'echo "cart has 3 items"',
    "checkout.sh": 'echo "paying..."; echo "expected total 42, got 41" >&2; exit 1',
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Up, Path]]:
    """`qgjob up`, plus a browserstack agent process running real commands (up's own
    simulated agents serve only emulator and device)."""
    project = tmp_path_factory.mktemp("app")
    (project / "tests").mkdir()
    for name, body in TESTS.items():
        (project / "tests" / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
    install = project / "install.sh"
    install.write_text(f'#!/usr/bin/env bash\necho "$1 $2" >> {project / "installs.log"}\n')
    up = start_up(tmp_path_factory.mktemp("qghome"))
    nats_url = _nats_url_of(up)
    agent_log = (up.home / "agent.out").open("w")
    agent = subprocess.Popen(
        [
            *QGJOB,
            "agent",
            "--target=browserstack",
            "--name=ci-agent",
            "--runner=command",
            f"--install-cmd=bash {install} {{app_version_id}} {{target}}",
            f"--test-cmd=bash {project}/{{test_path}}",
        ],
        env={**up.env, "QG_NATS_URL": nats_url, "USER_NAME": "ci"},
        stdout=agent_log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield up, project
    finally:
        agent.terminate()
        agent.wait(30)
        agent_log.close()
        up.stop()


def _nats_url_of(up: Up) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"NATS (nats://[0-9.:]+)", (up.home / "up.out").read_text())
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError("qgjob up did not print its NATS URL")


def run_action(up: Up, project: Path, **inputs: str) -> tuple[int, Path, dict[str, str], str]:
    """Run the action's script as action.yml does: inputs as QG_* variables, GitHub's
    output and summary files, qgjob on PATH, in the repository's folder."""
    github = project / "github"
    github.mkdir(exist_ok=True)
    outputs, summary = github / "output", github / "summary"
    outputs.write_text("")
    summary.write_text("")
    env = {
        **up.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(outputs),
        "GITHUB_STEP_SUMMARY": str(summary),
        "QG_ORG_ID": "qualgent",
        "QG_TARGET": "browserstack",
        "QG_TIMEOUT": "120",
        "QG_JUNIT_REPORT": str(github / "junit.xml"),
        **inputs,
    }
    done = subprocess.run(
        ["bash", str(ACTION_SCRIPT)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    written = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    return done.returncode, github / "junit.xml", written, summary.read_text() + done.stderr


def test_the_action_fails_the_step_on_a_failed_test_and_reports_every_test(
    stack: tuple[Up, Path],
) -> None:
    up, project = stack
    code, report, outputs, summary = run_action(
        up, project, QG_APP_VERSION_ID="build-7", QG_TESTS="tests/*.sh"
    )
    assert code == 1, summary
    assert outputs["exit-code"] == "1"
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "0")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {f"tests/{name}" for name in TESTS}
    assert {case.get("classname") for case in cases.values()} == {"build-7.browserstack"}
    failure = cases["tests/checkout.sh"].find("failure")
    assert failure is not None
    assert "expected total 42, got 41" in (failure.get("message") or "")
    assert "paying..." in (failure.text or ""), "the failure carries the log tail"
    assert "1 failed" in summary
    assert "| `tests/checkout.sh` |" in summary
    installs = (project / "installs.log").read_text().splitlines()
    assert installs == ["build-7 browserstack"], "one install for the whole build"


def test_the_action_passes_when_every_test_passed(stack: tuple[Up, Path]) -> None:
    up, project = stack
    code, report, outputs, summary = run_action(
        up, project, QG_APP_VERSION_ID="build-8", QG_TESTS="tests/login.sh\ntests/cart.sh"
    )
    assert (code, outputs["exit-code"]) == (0, "0"), summary
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "0")
