"""The simulated runner: install and test durations and failure rates from configuration,
for demos and benchmarks. Seeded, so a run is reproducible."""

from __future__ import annotations

import asyncio
import fnmatch
import random
import time
from typing import TYPE_CHECKING

import msgspec

from agent.runners import InstallFailed, Output, TestOutcome

if TYPE_CHECKING:
    from infra.lifecycle import JobState


class SimulatedConfig(msgspec.Struct, frozen=True, kw_only=True):
    install_s: float = 2.0
    test_s: float = 0.5
    jitter: float = 0.2
    """Durations vary by up to this fraction either way."""
    fail_rate: float = 0.1
    fail_glob: str = "*fail*"
    """Tests whose path matches always fail, so a demo or a test can ask for a failure."""
    install_fail_rate: float = 0.0
    seed: int | None = None


class SimulatedRunner:
    """Sleeps instead of installing and testing; fails tests at `fail_rate`."""

    name = "simulated"

    def __init__(self, config: SimulatedConfig) -> None:
        self._config = config
        self._random = random.Random(config.seed)

    def _duration(self, base: float) -> float:
        spread = base * self._config.jitter
        return max(0.0, base + self._random.uniform(-spread, spread))

    async def install(self, org_id: str, app_version_id: str, target: str) -> None:
        await asyncio.sleep(self._duration(self._config.install_s))
        if self._random.random() < self._config.install_fail_rate:
            raise InstallFailed(f"simulated install failure of {app_version_id} on {target}")

    async def run_test(self, job: JobState, output: Output) -> TestOutcome:
        started = time.monotonic()
        await output.write(f"$ simulated test {job.test_path} on {job.target}\n".encode())
        await asyncio.sleep(min(self._duration(self._config.test_s), job.timeout_s))
        duration = time.monotonic() - started
        doomed = fnmatch.fnmatch(job.test_path, self._config.fail_glob)
        if doomed or self._random.random() < self._config.fail_rate:
            reason = "simulated assertion failed"
            await output.write(f"  x {job.test_path}: {reason} ({duration:.2f} s)\n".encode())
            return TestOutcome(passed=False, duration_s=duration, reason=reason)
        await output.write(f"  ok {job.test_path} ({duration:.2f} s)\n".encode())
        return TestOutcome(passed=True, duration_s=duration)
