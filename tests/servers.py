"""Real servers for tests: a Docker container where a Docker engine runs (testcontainers),
else the embedded nats-server and PostgreSQL from PyPI wheels."""

from __future__ import annotations

import contextlib
import functools
import gc
import uuid
import warnings
from typing import TYPE_CHECKING

import asyncpg
import docker
from docker.errors import DockerException

from infra import db, embedded

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TEMPLATE_DB = "qg_template"


@functools.cache
def docker_available() -> bool:
    """Whether a Docker engine answers (asked once per session).

    Without one, docker's client fails in about 0.1 s and leaves its socket for the
    garbage collector: collect it here so the warning does not surface in a later test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            docker.from_env().close()
        except DockerException:
            return False
        finally:
            gc.collect()
    return True


@contextlib.contextmanager
def nats_server(store_dir: Path) -> Iterator[str]:
    """A JetStream-enabled nats-server on loopback, stopped on exit; yields its URL."""
    if docker_available():
        from testcontainers.core.container import DockerContainer

        container = DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222)
        container.start()
    else:
        server = embedded.start_nats(store_dir)
        try:
            yield server.url
        finally:
            server.stop()
        return
    try:
        yield f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"
    finally:
        container.stop()


@contextlib.contextmanager
def postgres_server(data_dir: Path) -> Iterator[str]:
    """A PostgreSQL server, stopped on exit; yields the URL of its `postgres` database."""
    if docker_available():
        from testcontainers.community.postgres import PostgresContainer

        container = PostgresContainer("postgres:16", driver=None)
        container.start()
    else:
        server = embedded.start_postgres(data_dir)
        try:
            yield server.url
        finally:
            server.stop()
        return
    try:
        yield container.get_connection_url()
    finally:
        container.stop()


def database_url(server_url: str, name: str) -> str:
    """The URL of database `name` on the server whose `postgres` URL is `server_url`."""
    base, sep, query = server_url.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{name}{sep}{query}"


async def create_template(server_url: str) -> None:
    """Migrate a template database once per test session."""
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await conn.close()
    template = await asyncpg.connect(database_url(server_url, TEMPLATE_DB))
    try:
        await db.migrate(template)
    finally:
        await template.close()


async def fresh_database(server_url: str) -> str:
    """A new database cloned from the migrated template; returns its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await conn.close()
    return database_url(server_url, name)
