"""The `jobs` read model: one row per job, folded with the shared job lifecycle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from infra import db, lifecycle
from infra import events as ev

if TYPE_CHECKING:
    from projections.runner import Batch

log = structlog.get_logger(__name__)

COLUMNS = (*lifecycle.JobState.__struct_fields__, "submit_seq")
_UPSERT = db.upsert_sql("jobs", COLUMNS, keep=("submit_seq",))


def _row(state: lifecycle.JobState, submit_seq: int) -> tuple[Any, ...]:
    return (*msgspec.structs.astuple(state), submit_seq)


class JobsProjection:
    """Folds job events into `jobs`."""

    name = "jobs"
    tables: tuple[str, ...] = ("jobs",)
    filter_subject = ev.JOB_EVENT_SUBJECTS

    async def apply(self, conn: db.Connection, events: Batch) -> None:
        job_events = [(seq, e) for seq, e in events if isinstance(e, ev.JobEvent)]
        states: dict[str, lifecycle.JobState] = {}
        submit_seqs: dict[str, int] = {}
        known = {e.job_id for _, e in job_events if not isinstance(e, ev.JobSubmitted)}
        if known:
            for row in await conn.fetch("SELECT * FROM jobs WHERE job_id = ANY($1)", known):
                states[row["job_id"]] = lifecycle.from_row(row)
                submit_seqs[row["job_id"]] = row["submit_seq"]
        changed: set[str] = set()
        for seq, event in job_events:
            if isinstance(event, ev.JobSubmitted):
                if event.job_id in states:
                    continue
                states[event.job_id] = lifecycle.start(event, seq)
                submit_seqs[event.job_id] = seq
            else:
                state = states.get(event.job_id)
                try:
                    if state is None:
                        raise lifecycle.IllegalTransition(event.job_id, "unknown", "event")
                    states[event.job_id] = lifecycle.evolve(state, event, seq)
                except lifecycle.IllegalTransition as exc:
                    log.warning(
                        "event_skipped", stream_seq=seq, job_id=event.job_id, reason=str(exc)
                    )
                    continue
            changed.add(event.job_id)
        if changed:
            rows = [_row(states[job_id], submit_seqs[job_id]) for job_id in changed]
            await conn.executemany(_UPSERT, rows)
