"""The `agents` read model: who serves which targets, what each is doing, and its tallies."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from infra import db
from infra import events as ev

if TYPE_CHECKING:
    from projections.runner import Batch


class AgentRow(msgspec.Struct, kw_only=True):
    agent_id: str
    targets: list[str]
    runner: str
    hostname: str
    status: str
    registered_at: datetime
    last_event_at: datetime
    batch_id: str | None = None
    jobs_run: int = 0
    installs: int = 0
    registered_seq: int = 0
    """Stream sequence of the latest `AgentRegistered`: the current incarnation's start."""


_UPSERT = db.upsert_sql("agents", AgentRow.__struct_fields__)


def _agent_of(event: ev.Event) -> str | None:
    match event:
        case (
            ev.AgentRegistered()
            | ev.AgentStopped()
            | ev.AgentLost()
            | ev.JobAssigned()
            | ev.JobPassed()
            | ev.JobFailed()
            | ev.BuildInstalled()
            | ev.BatchDrained()
            | ev.BatchYielded()
        ):
            return event.agent_id
    return None


def _evolve(row: AgentRow, event: ev.Event) -> None:
    row.last_event_at = max(row.last_event_at, event.at)
    match event:
        case ev.AgentStopped():
            row.status, row.batch_id = "stopped", None
        case ev.AgentLost():
            row.status, row.batch_id = "lost", None
        case ev.JobAssigned():
            row.status, row.batch_id = "busy", event.batch_id
        case ev.BatchDrained() | ev.BatchYielded():
            if row.batch_id == event.batch_id:
                row.status, row.batch_id = "idle", None
        case ev.JobPassed() | ev.JobFailed():
            row.jobs_run += 1
        case ev.BuildInstalled():
            row.installs += 1


class AgentsProjection:
    """Folds agent, assignment and install events into `agents`."""

    name = "agents"
    tables: tuple[str, ...] = ("agents",)
    filter_subject = ev.EVENT_SUBJECTS

    async def apply(self, conn: db.Connection, events: Batch) -> None:
        relevant = [(s, e, a) for s, e in events if (a := _agent_of(e)) is not None]
        if not relevant:
            return
        rows: dict[str, AgentRow] = {}
        records: list[Any] = await conn.fetch(
            "SELECT * FROM agents WHERE agent_id = ANY($1)", {a for _, _, a in relevant}
        )
        for record in records:
            rows[record["agent_id"]] = msgspec.convert(dict(record), AgentRow)
        for seq, event, agent_id in relevant:
            if isinstance(event, ev.AgentRegistered) and agent_id in rows:
                row = rows[agent_id]  # a restart keeps its tallies
                row.targets = [t.value for t in event.targets]
                row.runner, row.hostname, row.status = event.runner, event.hostname, "idle"
                row.batch_id, row.last_event_at = None, event.at
                row.registered_seq = seq
            elif isinstance(event, ev.AgentRegistered):
                rows[agent_id] = AgentRow(
                    agent_id=agent_id,
                    targets=[t.value for t in event.targets],
                    runner=event.runner,
                    hostname=event.hostname,
                    status="idle",
                    registered_at=event.at,
                    last_event_at=event.at,
                    registered_seq=seq,
                )
            elif agent_id in rows:
                _evolve(rows[agent_id], event)
        if rows:
            await conn.executemany(_UPSERT, [msgspec.structs.astuple(r) for r in rows.values()])
