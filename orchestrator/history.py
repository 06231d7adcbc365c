"""A job's attempt history, read off its events: who ran it, when, and how each run ended."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from infra import api
from infra import events as ev

if TYPE_CHECKING:
    from collections.abc import Iterable


def attempts(events: Iterable[ev.JobEvent]) -> list[api.AttemptView]:
    """One entry per assignment, oldest first; the last may still be open."""
    runs: list[api.AttemptView] = []

    def end(**fields: object) -> None:
        if runs and runs[-1].outcome in ("assigned", "running"):
            runs[-1] = msgspec.structs.replace(runs[-1], **fields)

    for event in events:
        match event:
            case ev.JobAssigned():
                runs.append(
                    api.AttemptView(
                        attempt=event.attempt,
                        agent_id=event.agent_id,
                        outcome="assigned",
                        assigned_at=event.at,
                    )
                )
            case ev.JobStarted():
                end(outcome="running", started_at=event.at)
            case ev.JobPassed():
                end(
                    outcome="passed",
                    ended_at=event.at,
                    duration_s=event.duration_s,
                    log_ref=event.log_ref,
                )
            case ev.JobFailed() | ev.JobRetried(test_failed=True):
                # A failed test, final or followed by a flaky-test retry.
                end(
                    outcome="failed" if isinstance(event, ev.JobFailed) else "retried",
                    ended_at=event.at,
                    duration_s=event.duration_s,
                    reason=event.reason,
                    log_ref=event.log_ref,
                )
            case ev.JobErrored():
                end(
                    outcome="errored", ended_at=event.at, reason=event.reason, log_ref=event.log_ref
                )
            case ev.JobReleased():
                end(outcome="released", ended_at=event.at, reason=event.reason)
            case ev.JobCancelled():
                end(outcome="cancelled", ended_at=event.at, reason=event.reason)
    return runs
