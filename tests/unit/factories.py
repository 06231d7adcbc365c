"""Event factories with defaults, for given-when-then domain tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from infra import api
from infra import events as ev

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def submitted(job_id: str = "j1", **fields: Any) -> ev.JobSubmitted:
    values: dict[str, Any] = {
        "at": T0,
        "job_id": ev.JobId(job_id),
        "org_id": "qualgent",
        "app_version_id": "xyz123",
        "test_path": "tests/onboarding.spec.js",
        "target": ev.Target.EMULATOR,
        "priority": 3,
        "batch_id": ev.BatchId("b1"),
    }
    return ev.JobSubmitted(**{**values, **fields})


def assigned(
    job_id: str = "j1", agent: str = "a1", attempt: int = 1, batch: str = "b1"
) -> ev.JobAssigned:
    return ev.JobAssigned(
        at=T0,
        job_id=ev.JobId(job_id),
        batch_id=ev.BatchId(batch),
        agent_id=ev.AgentId(agent),
        attempt=attempt,
    )


def started(job_id: str = "j1", agent: str = "a1", attempt: int = 1) -> ev.JobStarted:
    return ev.JobStarted(
        at=T0, job_id=ev.JobId(job_id), agent_id=ev.AgentId(agent), attempt=attempt
    )


def passed(job_id: str = "j1", agent: str = "a1", attempt: int = 1) -> ev.JobPassed:
    return ev.JobPassed(
        at=T0, job_id=ev.JobId(job_id), agent_id=ev.AgentId(agent), attempt=attempt, duration_s=1.0
    )


def errored(job_id: str = "j1", agent: str = "a1", attempt: int = 1) -> ev.JobErrored:
    return ev.JobErrored(
        at=T0,
        job_id=ev.JobId(job_id),
        agent_id=ev.AgentId(agent),
        attempt=attempt,
        reason="install failed",
    )


class CollectedOutput:
    """A runner's `Output` that keeps everything written to it."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


MakeJobView = Callable[..., api.JobView]


def job_views(**defaults: Any) -> MakeJobView:
    """A JobView factory numbering its jobs: a passed emulator job of build xyz123 unless
    `defaults` or the call say otherwise."""
    count = 0

    def make(status: ev.JobStatus = ev.JobStatus.PASSED, **fields: Any) -> api.JobView:
        nonlocal count
        count += 1
        values: dict[str, Any] = {
            "job_id": f"j{count:022d}",
            "org_id": "qualgent",
            "app_version_id": "xyz123",
            "test_path": f"tests/test_{count}.spec.js",
            "target": ev.Target.EMULATOR,
            "priority": 3,
            "status": status,
            "batch_id": "b1",
            "attempt": 1,
            "retries": 0,
            "timeout_s": 600.0,
            "submitted_at": T0,
        }
        return api.JobView(**{**values, **defaults, **fields})

    return make
