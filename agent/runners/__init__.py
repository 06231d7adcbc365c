"""How an agent installs builds and runs tests: the `Runner` protocol and its kinds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from infra.lifecycle import JobState


class RunnerError(Exception):
    """A runner could not do its work: an infrastructure failure, not a test verdict."""


class InstallFailed(RunnerError):
    """The build could not be installed on the device."""


class TestOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What running one test produced."""

    passed: bool
    duration_s: float
    reason: str = ""
    """Why the test failed (empty when it passed)."""


class Output(Protocol):
    """Where a runner sends a test's output while the test runs."""

    async def write(self, chunk: bytes) -> None:
        """Take the next piece of output."""


class Runner(Protocol):
    """Installs builds and runs tests on one device slot."""

    name: str

    async def install(self, org_id: str, app_version_id: str, target: str) -> None:
        """Install the build; raise InstallFailed when it cannot be."""

    async def run_test(self, job: JobState, output: Output) -> TestOutcome:
        """Run one test to its verdict, writing what it prints to `output`; raise
        RunnerError on an infrastructure failure."""
