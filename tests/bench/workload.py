"""The load the bench puts on qgjob's API: distinct job specs, bulk bodies, concurrent
clients posting them, and a steady pace of single submissions."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from tests.bench.measure import BenchError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from tests.stack import Stack

APP_VERSIONS = 20


def job_specs(tag: str, count: int) -> list[dict[str, Any]]:
    """`count` distinct job specs spread over APP_VERSIONS builds."""
    return [
        {
            "org_id": "bench",
            "app_version_id": f"{tag}-v{i % APP_VERSIONS}",
            "test_path": f"tests/{tag}/t{i}.spec.js",
            "target": "emulator",
        }
        for i in range(count)
    ]


def chunks(items: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Bulk bodies of at most `size` jobs each."""
    return [{"jobs": items[i : i + size]} for i in range(0, len(items), size)]


async def post_all(stack: Stack, bodies: Iterable[Any], concurrency: int) -> float:
    """POST every body to /jobs from `concurrency` clients at once; returns the seconds."""
    pending: Iterator[Any] = iter(bodies)

    async def client() -> None:
        for body in pending:
            status, reply = await stack.request("POST", "/jobs", body)
            if status != 201:
                raise BenchError(f"POST /jobs answered {status}: {reply}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def submit_paced(stack: Stack, specs: list[dict[str, Any]], rate: float) -> list[str]:
    """Submit one job after another, the i-th at `i / rate` seconds; returns their ids."""
    ids: list[str] = []
    started = time.perf_counter()
    for i, spec in enumerate(specs):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        ids.append((await stack.submit(**spec)).job_id)
    return ids
