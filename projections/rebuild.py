"""Rebuilding read models from QG_EVENTS while the live ones keep answering.

A rebuild folds the stream from sequence 1 into a scratch schema with the same
migrations. `replay` then swaps the result in: one transaction locks the live
checkpoints (the live projectors wait), folds the events that arrived meanwhile into
the scratch tables, and replaces the live rows and checkpoints with the rebuilt ones.
Readers see the old rows until that commit and the new ones after, never a mix.
`verify` does the same up to the swap and counts the rows that differ instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import nats.js.errors
import structlog

from infra import db, rpc
from infra import events as ev
from projections.runner import ProjectionRunner

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from nats.js import JetStreamContext

    from projections.runner import Projection

log = structlog.get_logger(__name__)

SCRATCH_SCHEMA = "qg_rebuild"
_LOCK_CHECKPOINTS = (
    "SELECT projection, last_seq FROM checkpoints WHERE projection = ANY($1) FOR UPDATE"
)


class RebuildError(Exception):
    """A replay or verify could not be done as asked."""


class Rebuilder:
    """Rebuilds read models of the live schema `live` into scratch schemas."""

    def __init__(
        self, js: JetStreamContext, database_url: str, live: db.Pool, models: Sequence[Projection]
    ) -> None:
        self._js = js
        self._database_url = database_url
        self._live = live
        self._models = {model.name: model for model in models}
        self._busy = asyncio.Lock()

    async def handle(self, request: rpc.OpsRequest) -> rpc.OpsResponse:
        """Run one ops request; one at a time per projector process."""
        started = time.monotonic()
        models = self._select(request.projection)
        async with self._busy:
            if request.action == "verify":
                reports = await self._verify(models)
                schema = None
            elif request.until is not None:
                schema = f"{SCRATCH_SCHEMA}_{request.until}"
                reports = await self._replay_until(models, request.until, schema)
            else:
                reports = await self._replay(models)
                schema = None
        seconds = time.monotonic() - started
        log.info("read_models_rebuilt", action=request.action, seconds=round(seconds, 3))
        return rpc.OpsResponse(projections=reports, schema=schema, seconds=seconds)

    def _select(self, name: str | None) -> list[Projection]:
        if name is None:
            return list(self._models.values())
        if name not in self._models:
            known = ", ".join(self._models)
            raise RebuildError(f"no read model named {name!r}; known: {known}")
        return [self._models[name]]

    async def _replay(self, models: list[Projection]) -> list[rpc.ProjectionReport]:
        async with self._scratch(SCRATCH_SCHEMA) as scratch:
            await self._fold(scratch, models, until=None)
            async with self._live.acquire() as conn, conn.transaction():
                live_seqs = await self._lock(conn, models)
                await self._fold(scratch, models, until=max(live_seqs.values()))
                reports = []
                for model in models:
                    reports.append(await self._report(scratch, model))
                    await self._copy(conn, model, SCRATCH_SCHEMA)
                    await conn.execute(
                        "INSERT INTO checkpoints VALUES ($1, $2) ON CONFLICT (projection)"
                        " DO UPDATE SET last_seq = EXCLUDED.last_seq",
                        model.name,
                        max(reports[-1].last_seq, live_seqs[model.name]),
                    )
        return reports

    async def _replay_until(
        self, models: list[Projection], until: int, schema: str
    ) -> list[rpc.ProjectionReport]:
        pool = await db.create_pool(self._database_url, schema, size=2)
        try:
            async with pool.acquire() as conn:
                await db.drop_schema(conn, schema)
                await db.migrate(conn, schema)
            await self._fold(pool, models, until=until)
            return [await self._report(pool, model) for model in models]
        finally:
            await pool.close()

    async def _verify(self, models: list[Projection]) -> list[rpc.ProjectionReport]:
        async with self._live.acquire() as conn:
            live_seqs = {m.name: await db.checkpoint(conn, m.name) for m in models}
        async with self._scratch(SCRATCH_SCHEMA) as scratch:
            # Only as far as the live models are, so that lag is not counted as a difference.
            await self._fold(scratch, models, until=min(live_seqs.values()))
            async with self._live.acquire() as conn, conn.transaction():
                live_seqs = await self._lock(conn, models)
                reports = []
                for model in models:
                    await self._fold(scratch, [model], until=live_seqs[model.name])
                    report = await self._report(scratch, model)
                    differing = await self._diff(conn, model, SCRATCH_SCHEMA)
                    reports.append(
                        rpc.ProjectionReport(
                            projection=model.name,
                            last_seq=report.last_seq,
                            rows=report.rows,
                            differing=differing,
                        )
                    )
        return reports

    @contextlib.asynccontextmanager
    async def _scratch(self, schema: str) -> AsyncIterator[db.Pool]:
        """A pool on a fresh, migrated scratch schema, dropped afterwards."""
        pool = await db.create_pool(self._database_url, schema, size=2)
        try:
            async with pool.acquire() as conn:
                await db.drop_schema(conn, schema)
                await db.migrate(conn, schema)
            yield pool
        finally:
            with contextlib.suppress(Exception):  # the database is gone: nothing to drop
                async with pool.acquire() as conn:
                    await db.drop_schema(conn, schema)
            await pool.close()

    async def _fold(self, pool: db.Pool, models: Sequence[Projection], until: int | None) -> None:
        """Fold the stream into `pool`'s schema from its checkpoint on, to `until` or to
        the end of what is stored now."""
        for model in models:
            runner = ProjectionRunner(
                self._js, pool, model, durable=f"rebuild-{model.name}", until=until
            )
            try:
                await runner.run(asyncio.Event(), catch_up=True)
            finally:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self._js.delete_consumer(ev.EVENTS_STREAM, f"rebuild-{model.name}")

    async def _lock(self, conn: db.Connection, models: Sequence[Projection]) -> dict[str, int]:
        """Lock the live checkpoints (live projectors wait on them); their sequences."""
        names = [model.name for model in models]
        rows = await conn.fetch(_LOCK_CHECKPOINTS, names)
        found = {row["projection"]: row["last_seq"] for row in rows}
        return {name: found.get(name, 0) for name in names}

    async def _report(self, pool: db.Pool, model: Projection) -> rpc.ProjectionReport:
        async with pool.acquire() as conn:
            rows = 0
            for table in model.tables:
                rows += await conn.fetchval(f"SELECT count(*) FROM {table}")
            return rpc.ProjectionReport(
                projection=model.name,
                last_seq=await db.checkpoint(conn, model.name),
                rows=rows,
            )

    async def _copy(self, conn: db.Connection, model: Projection, scratch: str) -> None:
        """Replace the live rows with the rebuilt ones (DELETE, not TRUNCATE: readers keep
        reading the old rows until the commit instead of waiting on a lock)."""
        for table in model.tables:
            await conn.execute(f"DELETE FROM {table}")
            await conn.execute(f"INSERT INTO {table} SELECT * FROM {scratch}.{table}")

    async def _diff(self, conn: db.Connection, model: Projection, scratch: str) -> int:
        differing = 0
        for table in model.tables:
            differing += await conn.fetchval(
                f"SELECT count(*) FROM ((TABLE {table} EXCEPT ALL TABLE {scratch}.{table})"
                f" UNION ALL (TABLE {scratch}.{table} EXCEPT ALL TABLE {table})) AS d"
            )
        return differing
