"""Fixtures: real nats-server and PostgreSQL for every test that needs them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from infra import embedded
from infra import logging as qlogging
from tests import servers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

qlogging.configure("console")


@pytest.fixture(scope="session")
async def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    with servers.postgres_server(tmp_path_factory.mktemp("pg") / "data") as url:
        await servers.create_template(url)
        yield url


@pytest.fixture
async def database_url(postgres_url: str) -> str:
    """A fresh, migrated database of its own for each test."""
    return await servers.fresh_database(postgres_url)


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A nats-server of its own for each test, so streams never leak between tests."""
    with servers.nats_server(tmp_path / "nats") as url:
        yield url


@pytest.fixture
def qg_servers(nats_url: str, database_url: str) -> embedded.Servers:
    return embedded.Servers(nats_url=nats_url, database_url=database_url)
