"""PostgreSQL access: the asyncpg pool and the read-model migrations.

Read-model tables live in one PostgreSQL schema (default `qg`); the same migrations can
build another schema, which tests and the replay benchmark fold into from sequence 1.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TypeAlias

import asyncpg
import asyncpg.pool

DEFAULT_SCHEMA = "qg"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = (
    "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
)


class DatabaseError(Exception):
    """The read-model database refused an operation."""


def _checked(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise DatabaseError(f"invalid schema name {schema!r}")
    return schema


async def create_pool(url: str, schema: str = DEFAULT_SCHEMA, size: int = 10) -> Pool:
    """A pool whose connections resolve table names in `schema`."""
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=size,
        server_settings={"search_path": _checked(schema)},
    )
    assert pool is not None
    return pool


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("infra") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text()) for p in files]


async def migrate(conn: Connection, schema: str = DEFAULT_SCHEMA) -> None:
    """Create `schema` and apply any migration it has not had, in one transaction."""
    name = _checked(schema)
    async with conn.transaction():
        # Concurrent starters (orchestrator, projectors) serialise here.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
        await conn.execute(f"SET LOCAL search_path TO {name}")
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY)")
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for file_name, sql in _migrations():
            if file_name not in done:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1)", file_name)


async def checkpoint(conn: Connection, projection: str) -> int:
    """The last stream sequence a read-model projector applied (0: none yet)."""
    seq: int | None = await conn.fetchval(
        "SELECT last_seq FROM checkpoints WHERE projection = $1", projection
    )
    return seq or 0


def upsert_sql(table: str, columns: tuple[str, ...], keep: tuple[str, ...] = ()) -> str:
    """`INSERT ... ON CONFLICT (first column) DO UPDATE` of every column but the key and
    `keep` (columns a later row must not overwrite)."""
    updated = [c for c in columns[1:] if c not in keep]
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))}) "
        f"ON CONFLICT ({columns[0]}) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in updated)
    )


async def drop_schema(conn: Connection, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {_checked(schema)} CASCADE")
