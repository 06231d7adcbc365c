"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.stack import Stack, running_stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from infra import embedded


@pytest.fixture
async def stack(qg_servers: embedded.Servers) -> AsyncIterator[Stack]:
    """A stack without agents: jobs stay queued where a test needs them to."""
    async with running_stack(qg_servers, []) as running:
        yield running
