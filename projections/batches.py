"""The `batches` read model: one row per (org, app version, target) grouping key, with
the installs agents performed for it. Job counts per batch are read from `jobs`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra import events as ev

if TYPE_CHECKING:
    from datetime import datetime

    from infra import db
    from projections.runner import Batch

_UPSERT_BATCH = """
INSERT INTO batches (batch_id, org_id, app_version_id, target, created_at, last_job_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (batch_id) DO UPDATE
    SET last_job_at = GREATEST(batches.last_job_at, EXCLUDED.last_job_at)
"""
_INSTALLED = """
UPDATE batches SET installs = installs + 1, last_agent_id = $2, last_install_at = $3
WHERE batch_id = $1
"""
_DRAINED = "UPDATE batches SET tickets_spent = tickets_spent + 1 WHERE batch_id = $1"


class BatchesProjection:
    """Folds submissions and batch events into `batches`."""

    name = "batches"
    tables: tuple[str, ...] = ("batches",)
    filter_subject = ev.EVENT_SUBJECTS

    async def apply(self, conn: db.Connection, events: Batch) -> None:
        submitted: dict[str, tuple[str, str, str, str, datetime, datetime]] = {}
        installed: list[tuple[str, str, datetime]] = []
        drained: list[tuple[str]] = []
        for _, event in events:
            match event:
                case ev.JobSubmitted():
                    first = submitted.get(event.batch_id)
                    submitted[event.batch_id] = (
                        event.batch_id,
                        event.org_id,
                        event.app_version_id,
                        event.target.value,
                        first[4] if first else event.at,
                        event.at,
                    )
                case ev.BuildInstalled():
                    installed.append((event.batch_id, event.agent_id, event.at))
                case ev.BatchDrained():
                    drained.append((event.batch_id,))
        # Submissions first: an install always follows its batch's first submission.
        if submitted:
            await conn.executemany(_UPSERT_BATCH, list(submitted.values()))
        if installed:
            await conn.executemany(_INSTALLED, installed)
        if drained:
            await conn.executemany(_DRAINED, drained)
