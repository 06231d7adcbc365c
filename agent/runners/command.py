"""The command runner: real execution of install and test command templates.

Templates are argument lists, never shell strings: each template argument becomes exactly
one argument with its placeholders replaced, so no job field can add arguments or
commands. Every command runs in its own process group, so a timeout or a cancellation
can stop the test and everything it started.
"""

from __future__ import annotations

import os
import string
import time
from typing import TYPE_CHECKING

import msgspec

from agent.runners import InstallFailed, Output, RunnerError, TestOutcome, process

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from infra.lifecycle import JobState

INSTALL_PLACEHOLDERS = frozenset({"org_id", "app_version_id", "target"})
"""What an install template may name: install runs once per build and target."""
TEST_PLACEHOLDERS = INSTALL_PLACEHOLDERS | {"test_path", "job_id"}
"""What a test template may name."""

_formatter = string.Formatter()


def check_template(template: Sequence[str], allowed: frozenset[str]) -> None:
    """Raise ValueError when a template argument is malformed or names a placeholder
    outside `allowed` (conversions and format specs are refused too)."""
    for arg in template:
        try:
            fields = [
                (f, spec, conv) for _, f, spec, conv in _formatter.parse(arg) if f is not None
            ]
        except ValueError as exc:
            raise ValueError(f"bad template argument {arg!r}: {exc}") from exc
        for name, spec, conversion in fields:
            if name not in allowed:
                known = ", ".join(f"{{{n}}}" for n in sorted(allowed))
                raise ValueError(f"unknown placeholder {{{name}}} in {arg!r}; known: {known}")
            if spec or conversion:
                raise ValueError(f"placeholder {{{name}}} in {arg!r} takes no conversion or spec")


def render(template: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The argument list of a checked template with its placeholders replaced: one
    argument out for each argument in, whatever the values contain."""
    return [
        "".join(text + ("" if name is None else values[name]) for text, name, _, _ in parsed)
        for parsed in (_formatter.parse(arg) for arg in template)
    ]


class CommandConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Install and test command templates of the command runner; checked when built."""

    test: tuple[str, ...]
    """The test command, e.g. `("npx", "appwright", "test", "{test_path}")`."""
    install: tuple[str, ...] = ()
    """The install command; empty means no install step."""
    workdir: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Added to the agent's own environment."""
    kill_grace_s: float = 5.0
    """Between SIGTERM and SIGKILL when a command must be stopped."""
    output_limit_bytes: int = 1 << 20
    """How much of a command's output (the end of it) is kept in memory."""

    def __post_init__(self) -> None:
        if not self.test:
            raise ValueError("the test command template is empty")
        check_template(self.test, TEST_PLACEHOLDERS)
        check_template(self.install, INSTALL_PLACEHOLDERS)


class CommandRunner:
    """Runs the configured install and test commands as real processes."""

    name = "command"

    def __init__(self, config: CommandConfig) -> None:
        self._config = config

    async def install(self, org_id: str, app_version_id: str, target: str) -> None:
        if not self._config.install:
            return
        values = {"org_id": org_id, "app_version_id": app_version_id, "target": target}
        try:
            finished = await self._execute(render(self._config.install, values))
        except RunnerError as exc:
            raise InstallFailed(str(exc)) from exc
        if finished.returncode != 0:
            raise InstallFailed(finished.describe(lines=5))

    async def run_test(self, job: JobState, output: Output) -> TestOutcome:
        values = {
            "org_id": job.org_id,
            "app_version_id": job.app_version_id,
            "target": job.target.value,
            "test_path": job.test_path,
            "job_id": job.job_id,
        }
        started = time.monotonic()
        finished = await self._execute(render(self._config.test, values), output)
        duration = time.monotonic() - started
        if finished.returncode == 0:
            return TestOutcome(passed=True, duration_s=duration)
        return TestOutcome(passed=False, duration_s=duration, reason=finished.describe())

    async def _execute(self, argv: list[str], output: Output | None = None) -> process.Finished:
        config = self._config
        return await process.execute(
            argv,
            cwd=config.workdir,
            env={**os.environ, **config.env},
            kill_grace_s=config.kill_grace_s,
            output_limit_bytes=config.output_limit_bytes,
            output=output,
        )
