"""Opening the shared servers the way every component does: NATS with the streams
declared, and a PostgreSQL pool with the read-model migrations applied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra import db
from infra import nats as qnats

if TYPE_CHECKING:
    import contextlib

    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from infra.embedded import Servers


@dataclass(frozen=True)
class Connections:
    nc: Client
    js: JetStreamContext
    pool: db.Pool


async def open_all(stack: contextlib.AsyncExitStack, servers: Servers, name: str) -> Connections:
    """Connect to NATS and PostgreSQL, declare the streams and migrate; `stack` closes
    both in reverse order (the pool first, then a drained NATS connection)."""
    nc = await qnats.connect(servers.nats_url, name=name)
    stack.push_async_callback(qnats.close, nc)
    js = nc.jetstream()
    await qnats.declare_streams(js)
    pool = await db.create_pool(servers.database_url)
    stack.push_async_callback(pool.close)
    async with pool.acquire() as conn:
        await db.migrate(conn)
    return Connections(nc=nc, js=js, pool=pool)
