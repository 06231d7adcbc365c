"""The read models after a chaos run: caught up with the stream, and equal to a fresh
replay of it (`POST /ops/verify`). When they do not catch up, say where each projector's
consumer stands and what the database sessions are doing, so a stuck projector can be
told from a slow one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from infra import events as ev
from infra import nats as qnats

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from tests.stack import Stack

SETTLE_TIMEOUT_S = 15.0
"""Caught up within a second when healthy; much longer means a projector is stuck."""


class NotSettled(AssertionError):
    """The read models stopped following the stream."""


@dataclass(frozen=True)
class ReadModels:
    differing: dict[str, int | None] = field(default_factory=dict)
    """Per read model, the rows that differ from the replay."""
    behind: str | None = None
    """Why the read models did not catch up, if they did not."""

    def check(self) -> None:
        if self.behind is not None:
            raise NotSettled(self.behind)
        assert set(self.differing.values()) == {0}, f"read models != replay: {self.differing}"


async def compare_with_replay(stack: Stack, js: JetStreamContext, database_url: str) -> ReadModels:
    """Wait until the projectors have applied every event, then compare with a replay."""
    try:
        await stack.settled(SETTLE_TIMEOUT_S)
    except TimeoutError:
        state = f"{await _consumers(js)}; busy sessions: {await _sessions(database_url)}"
        return ReadModels(behind=f"behind {SETTLE_TIMEOUT_S:g} s after the last verdict: {state}")
    status, body = await stack.request("POST", "/ops/verify", {})
    assert status == 200, body
    return ReadModels(differing={r["projection"]: r["differing"] for r in body["projections"]})


async def _consumers(js: JetStreamContext) -> str:
    """Where each read-model projector's durable consumer is, against the stream."""
    last = (await js.stream_info(ev.EVENTS_STREAM)).state.last_seq
    states = [
        f"{info.name} acked to {info.ack_floor.stream_seq if info.ack_floor else 0}, "
        f"{info.num_pending} pending, {info.num_ack_pending} unacked, {info.num_waiting} fetching"
        for info in await js.consumers_info(ev.EVENTS_STREAM)
        if info.name.startswith(qnats.PROJECTION_CONSUMER_PREFIX)
    ]
    return f"stream at {last}; " + "; ".join(states)


async def _sessions(database_url: str) -> str:
    """What every other non-idle session on the database is doing, and waiting for."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pid, state, wait_event_type, wait_event,"
            " round(extract(epoch FROM now() - xact_start)) AS xact_s, left(query, 70) AS query"
            " FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state <> 'idle'"
        )
    finally:
        await conn.close()
    described = [
        f"pid {r['pid']} {r['state']} waiting {r['wait_event_type']}/{r['wait_event']}"
        f" for {r['xact_s']} s in: {r['query']}"
        for r in rows
    ]
    return "; ".join(described) or "none"
