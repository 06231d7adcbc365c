"""The work a chaos scenario runs: a seeded set of jobs over a few builds and both
targets, some doomed to fail (`*fail*` in the path) and some with flaky-test retries,
submitted in bulk waves that keep being retried with the same idempotency keys until the
API accepts them, as a CI step would."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    import random

    from tests.stack import Stack

ORG = "chaos"
REQUEST_TIMEOUT_S = 10.0
RETRY_PAUSE_S = 0.25


class SubmitRefused(Exception):
    """The API refused a valid submission outright (4xx): a bug, not an outage."""


@dataclass(frozen=True)
class Spec:
    """One job to submit and the verdict the simulated runner must give it."""

    body: dict[str, Any]
    expect_passed: bool

    @property
    def key(self) -> str:
        key: str = self.body["idempotency_key"]
        return key


def make_specs(rng: random.Random, label: str, jobs: int, builds: int) -> list[Spec]:
    """`jobs` distinct jobs over `builds` app builds, even builds on emulators and odd
    ones on devices; about one in ten fails, about one in four has retries."""
    specs = []
    for i in range(jobs):
        build = i % builds
        doomed = rng.random() < 0.1
        name = f"t{i}_fail" if doomed else f"t{i}"
        body = {
            "org_id": ORG,
            "app_version_id": f"{label}-v{build}",
            "test_path": f"tests/{label}/{name}.spec.js",
            "target": "emulator" if build % 2 == 0 else "device",
            "priority": rng.randint(1, 5),
            "retries": rng.choice((0, 0, 0, 1, 2)),
            "idempotency_key": f"{label}-{i}",
        }
        specs.append(Spec(body=body, expect_passed=not doomed))
    return specs


@dataclass
class Submitter:
    """Submits waves of jobs; remembers every job id the API accepted."""

    stack: Stack
    accepted: dict[str, str] = field(default_factory=dict)
    """Idempotency key -> the job id the API answered with."""
    retried_requests: int = 0
    """Bulk requests that failed (outage) and were sent again."""

    async def submit(self, specs: list[Spec], deadline: float) -> None:
        """POST one bulk request until it is accepted (bounded by `deadline`, a
        `time.monotonic()` value)."""
        body = {"jobs": [spec.body for spec in specs]}
        while True:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status, reply = await self.stack.request("POST", "/jobs", body)
            except (aiohttp.ClientError, TimeoutError):
                status, reply = 0, None
            if status in (200, 201):
                for spec, job in zip(specs, reply["jobs"], strict=True):
                    self.accepted[spec.key] = job["job_id"]
                return
            if 400 <= status < 500:
                raise SubmitRefused(f"POST /jobs answered {status}: {reply}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"POST /jobs not accepted before the deadline: {status}")
            self.retried_requests += 1
            await asyncio.sleep(RETRY_PAUSE_S)

    async def waves(self, specs: list[Spec], waves: int, pause_s: float, timeout_s: float) -> None:
        """Submit `specs` in `waves` bulk requests, `pause_s` apart."""
        deadline = time.monotonic() + timeout_s
        size = -(-len(specs) // waves)
        for start in range(0, len(specs), size):
            if start:
                await asyncio.sleep(pause_s)
            await self.submit(specs[start : start + size], deadline)


def expected_job_ids(specs: list[Spec], submitter: Submitter) -> dict[str, Spec]:
    """Accepted job id -> its spec."""
    by_key = {spec.key: spec for spec in specs}
    return {job_id: by_key[key] for key, job_id in submitter.accepted.items()}
