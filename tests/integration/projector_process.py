"""A read-model projector in a process of its own, for tests that kill it with SIGKILL.

Usage: python -m tests.integration.projector_process NATS_URL DATABASE_URL SCHEMA NAME
It prints its checkpoint after every applied batch.
"""

from __future__ import annotations

import asyncio
import sys

from infra import db
from infra import nats as qnats
from projections.app import read_models
from projections.runner import ProjectionRunner


def report(position: int) -> None:
    sys.stdout.write(f"{position}\n")
    sys.stdout.flush()


async def main(nats_url: str, database_url: str, schema: str, name: str) -> None:
    nc = await qnats.connect(nats_url, "projector-process")
    pool = await db.create_pool(database_url, schema)
    projection = next(p for p in read_models() if p.name == name)
    runner = ProjectionRunner(
        nc.jetstream(),
        pool,
        projection,
        durable=f"{schema}-{name}",
        batch_size=7,
        on_applied=report,
    )
    await runner.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
