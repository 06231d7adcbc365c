"""Fixtures of the chaos tests: servers they may kill (a PostgreSQL server of their own,
since one scenario kills it, and a nats-server per test), and a summary of every
scenario printed at the end of the pytest run."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from tests import servers
from tests.chaos.servers import RestartableNats, RestartablePostgres

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from _pytest.terminal import TerminalReporter

_SUMMARY: list[str] = []


@pytest.fixture(scope="session")
async def chaos_postgres() -> AsyncIterator[RestartablePostgres]:
    """Its data lives outside pytest's temporary root: PostgreSQL runs as another user
    (pgserver's, under root) that must traverse the path at every restart, and a pytest
    session starting meanwhile makes that root private to its owner again."""
    home = Path(tempfile.mkdtemp(prefix="qgjob-chaos-pg-"))
    server = RestartablePostgres(home / "data")
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
async def chaos_database(chaos_postgres: RestartablePostgres) -> str:
    """The URL of a new, empty database (the components migrate it)."""
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(chaos_postgres.url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return servers.database_url(chaos_postgres.url, name)


@pytest.fixture
async def chaos_nats(tmp_path: Path) -> AsyncIterator[RestartableNats]:
    """A nats-server of the test's own, on a port it keeps across restarts."""
    server = RestartableNats(tmp_path / "nats")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def chaos_summary() -> list[str]:
    """Lines for the end of the run: what each scenario survived."""
    return _SUMMARY


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if _SUMMARY:
        terminalreporter.write_sep("-", "chaos")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
