"""A read-model projector in a process of its own, for tests that kill it with SIGKILL.

Usage: python -m tests.integration.projector_process NATS_URL DATABASE_URL SCHEMA NAME FREEZE_AT

Once it has committed a batch reaching stream sequence FREEZE_AT it freezes before
acknowledging that batch and prints `frozen`: the worst moment for a crash.
"""

from __future__ import annotations

import asyncio
import sys
import time

from infra import db
from infra import nats as qnats
from projections.app import read_models
from projections.runner import ProjectionRunner


async def main(nats_url: str, database_url: str, schema: str, name: str, freeze_at: int) -> None:
    def freeze_when_there(position: int) -> None:
        if position >= freeze_at:
            sys.stdout.write("frozen\n")
            sys.stdout.flush()
            time.sleep(3600)  # blocks the event loop: committed, never acknowledged

    nc = await qnats.connect(nats_url, "projector-process")
    pool = await db.create_pool(database_url, schema)
    projection = next(p for p in read_models() if p.name == name)
    runner = ProjectionRunner(
        nc.jetstream(),
        pool,
        projection,
        durable=f"{schema}-{name}",
        batch_size=7,
        on_applied=freeze_when_there,
    )
    await runner.run(asyncio.Event())


if __name__ == "__main__":
    nats_url, database_url, schema, name, freeze_at = sys.argv[1:6]
    asyncio.run(main(nats_url, database_url, schema, name, int(freeze_at)))
