"""A job's attempt history, as `qgjob status` shows it."""

from __future__ import annotations

from infra import events as ev
from orchestrator import history
from tests.unit import factories as f


def test_every_assignment_is_a_row_that_says_how_it_ended() -> None:
    events: list[ev.JobEvent] = [
        f.submitted(),
        f.assigned(agent="a1"),
        ev.JobReleased(at=f.T0, job_id=ev.JobId("j1"), agent_id=ev.AgentId("a1"), reason="stop"),
        f.assigned(agent="a2"),
        f.started(agent="a2"),
        f.errored(agent="a2"),
        ev.JobRetried(at=f.T0, job_id=ev.JobId("j1"), attempt=2, reason="install failed"),
        f.assigned(agent="a3", attempt=2),
        f.started(agent="a3", attempt=2),
        ev.JobRetried(
            at=f.T0,
            job_id=ev.JobId("j1"),
            attempt=3,
            reason="test failed (boom); retry 1 of 1",
            test_failed=True,
            duration_s=2.5,
            log_ref="o/j1/2",
        ),
        f.assigned(agent="a3", attempt=3),
        f.started(agent="a3", attempt=3),
        f.passed(agent="a3", attempt=3),
    ]
    runs = history.attempts(events)
    assert [(r.attempt, r.agent_id, r.outcome) for r in runs] == [
        (1, "a1", "released"),
        (1, "a2", "errored"),
        (2, "a3", "retried"),
        (3, "a3", "passed"),
    ]
    assert runs[0].reason == "stop"
    assert runs[1].reason == "install failed"
    assert (runs[2].duration_s, runs[2].log_ref) == (2.5, "o/j1/2")
    assert runs[3].started_at == f.T0


def test_an_open_run_stays_open_and_a_cancel_closes_it() -> None:
    running: list[ev.JobEvent] = [f.submitted(), f.assigned(), f.started()]
    assert [r.outcome for r in history.attempts(running)] == ["running"]
    cancelled: list[ev.JobEvent] = [*running, ev.JobCancelled(at=f.T0, job_id=ev.JobId("j1"))]
    assert [(r.outcome, r.reason) for r in history.attempts(cancelled)] == [
        ("cancelled", "cancelled by user")
    ]
    assert history.attempts([f.submitted()]) == []
