"""In-memory stand-ins for what the real writers talk to, for the lifecycle properties.

Only the infrastructure is modelled: the event log (guarded appends, dedup), the `jobs`
read model with its checkpoint, the registry and the work queue. The code that decides
and folds (`lifecycle`, `domain`, `requeue`, `JobService`, `LostAgentSweeper`,
`JobsProjection`, `Grouping`) runs for real against them.
"""

from __future__ import annotations

import contextlib
import enum
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from nats.js.errors import KeyNotFoundError

from infra import events as ev
from infra.eventlog import Append, Appended, ConcurrencyConflict, EventLog
from projections import jobs

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable
    from datetime import datetime


class Clock:
    """Model time, standing in for `ev.utcnow`; only the test moves it on."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


class Crash(Exception):
    """The writing process died before this append (injected)."""


class MemoryLog(EventLog):
    """QG_EVENTS in memory: one sequence over all subjects, `Nats-Msg-Id` dedup checked
    first, then the expected-last-subject-sequence guard, as JetStream does."""

    def __init__(self) -> None:  # no NATS connection: nothing of the base class is used
        self.entries: list[tuple[int, ev.Event]] = []
        self.guarded: list[Append] = []
        """Every guarded append ever attempted, landed or refused, for stale replays."""
        self.listeners: list[Callable[[int, ev.Event], None]] = []
        self.crash_after: int | None = None
        """Appends the writer still makes before it dies (None: it never does)."""
        self._last: dict[str, int] = {}
        self._msg_ids: dict[str, int] = {}

    def put(self, append: Append) -> Appended | ConcurrencyConflict:
        """One append, synchronously; a refusal comes back as a value."""
        if self.crash_after is not None:
            if self.crash_after == 0:
                raise Crash
            self.crash_after -= 1
        if append.msg_id is not None and append.msg_id in self._msg_ids:
            return Appended(seq=self._msg_ids[append.msg_id], duplicate=True)
        subject = ev.subject_of(append.event)
        if append.expected_seq is not None:
            self.guarded.append(append)
            if self._last.get(subject, 0) != append.expected_seq:
                return ConcurrencyConflict(subject, append.expected_seq)
        seq = len(self.entries) + 1
        event = ev.decode(ev.encode(append.event))  # readers get what the wire carried
        self.entries.append((seq, event))
        self._last[subject] = seq
        if append.msg_id is not None:
            self._msg_ids[append.msg_id] = seq
        for listener in self.listeners:
            listener(seq, event)
        return Appended(seq=seq, duplicate=False)

    async def append(
        self, event: ev.Event, *, msg_id: str | None = None, expected_seq: int | None = None
    ) -> Appended:
        result = self.put(Append(event, msg_id, expected_seq))
        if isinstance(result, ConcurrencyConflict):
            raise result
        return result

    async def append_all(self, appends: list[Append]) -> list[Appended | ConcurrencyConflict]:
        return [self.put(a) for a in appends]

    async def read(self, subject: str) -> list[tuple[int, ev.Event]]:
        return [(seq, e) for seq, e in self.entries if ev.subject_of(e) == subject]

    async def last(self, subject: str) -> tuple[int, ev.Event] | None:
        found = await self.read(subject)
        return found[-1] if found else None

    def job_events(self, job_id: str) -> list[tuple[int, ev.JobEvent]]:
        return [
            (seq, e) for seq, e in self.entries if isinstance(e, ev.JobEvent) and e.job_id == job_id
        ]


def _column(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


class JobsTable:
    """The `jobs` table and the `jobs` checkpoint, as a connection answering exactly the
    queries the projection, the claim and the sweeper make; any other query fails."""

    def __init__(self, log: MemoryLog) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.checkpoint = 0
        self._log = log
        """For the `agents` read model's registrations, always caught up here."""

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        if "WHERE job_id = ANY($1)" in sql:
            return [dict(self.rows[job_id]) for job_id in args[0] if job_id in self.rows]
        if "WHERE batch_id = $1 AND status = 'queued'" in sql:
            assert "(not_before IS NULL OR not_before <= $3)" in sql, f"unexpected query: {sql}"
            batch_id, limit, now = args
            ready = [
                r
                for r in self.rows.values()
                if (r["batch_id"], r["status"]) == (batch_id, "queued")
                and (r["not_before"] is None or r["not_before"] <= now)
            ]
            ready.sort(key=lambda r: (-r["priority"], r["submit_seq"]))
            return [{**r, "ready": len(ready)} for r in ready[:limit]]
        if "WHERE status IN ('assigned', 'running') AND agent_id = $1" in sql:
            held = [r for r in self.rows.values() if r["status"] in ("assigned", "running")]
            held = [r for r in held if r["agent_id"] == args[0]]
            held.sort(key=lambda r: (-r["priority"], r["submit_seq"]))
            return [dict(r) for r in held]
        if "WHERE status IN ('assigned', 'running')" in sql:
            return [dict(r) for r in self.rows.values() if r["status"] in ("assigned", "running")]
        if "WHERE status = 'errored' AND finished_at < $1" in sql:
            return [
                dict(r)
                for r in self.rows.values()
                if r["status"] == "errored" and r["finished_at"] < args[0]
            ]
        if sql == "SELECT agent_id, registered_seq FROM agents":
            latest = {
                e.agent_id: seq for seq, e in self._log.entries if isinstance(e, ev.AgentRegistered)
            }
            return [{"agent_id": a, "registered_seq": seq} for a, seq in latest.items()]
        raise AssertionError(f"unexpected query: {sql}")

    async def fetchval(self, sql: str, *args: Any) -> Any:
        assert "FROM checkpoints WHERE projection = $1" in sql, f"unexpected query: {sql}"
        return self.checkpoint if args[0] == jobs.JobsProjection.name else None

    async def executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        assert sql.startswith("INSERT INTO jobs "), f"unexpected statement: {sql}"
        for row in rows:
            values = {name: _column(v) for name, v in zip(jobs.COLUMNS, row, strict=True)}
            old = self.rows.get(values["job_id"])
            if old is not None:  # the upsert keeps the first submit_seq
                values["submit_seq"] = old["submit_seq"]
            self.rows[values["job_id"]] = values


class MemoryPool:
    """A pool whose every connection is the one in-memory table."""

    def __init__(self, conn: JobsTable) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[JobsTable]:
        yield self._conn


class MemoryRegistry:
    """The QG_AGENTS bucket: a key per agent whose heartbeat has not expired."""

    def __init__(self) -> None:
        self.alive: set[str] = set()

    async def get(self, key: str) -> bytes:
        if key not in self.alive:
            raise KeyNotFoundError
        return b"alive"


class WorkQueue:
    """QG_WORK as agents see it: unacknowledged tickets, each free or held by one agent.
    Publishing drops a ticket whose message id (`batch:ticket`) was published within the
    duplicate window, as `Nats-Msg-Id` does; an ack removes the ticket whoever holds it."""

    def __init__(self, clock: Clock, duplicate_window_s: float) -> None:
        self.tickets: dict[str, ev.WorkTicket] = {}
        self.holder: dict[str, str] = {}
        self._clock = clock
        self._window = timedelta(seconds=duplicate_window_s)
        self._published: dict[str, datetime] = {}

    @staticmethod
    def msg_id(ticket: ev.WorkTicket) -> str:
        return f"{ticket.batch_id}:{ticket.ticket}"

    def publish(self, ticket: ev.WorkTicket) -> None:
        msg_id, now = self.msg_id(ticket), self._clock.now()
        if msg_id in self._published and now - self._published[msg_id] < self._window:
            return
        self._published[msg_id] = now
        self.tickets[msg_id] = ticket

    def take(self, agent_id: str, targets: tuple[ev.Target, ...]) -> ev.WorkTicket | None:
        """The oldest free ticket of the highest band among the agent's targets."""
        free = [
            (msg_id, t)
            for msg_id, t in self.tickets.items()
            if msg_id not in self.holder and t.target in targets
        ]
        if not free:
            return None
        msg_id, ticket = max(free, key=lambda pair: pair[1].band)
        self.holder[msg_id] = agent_id
        return ticket

    def ack(self, ticket: ev.WorkTicket) -> None:
        msg_id = self.msg_id(ticket)
        self.tickets.pop(msg_id, None)
        self.holder.pop(msg_id, None)

    def nak(self, ticket: ev.WorkTicket, agent_id: str) -> None:
        msg_id = self.msg_id(ticket)
        if self.holder.get(msg_id) == agent_id:
            del self.holder[msg_id]

    def redeliver(self, agent_id: str) -> None:
        """The agent stopped renewing its tickets: after AckWait they are free again."""
        for msg_id in [m for m, holder in self.holder.items() if holder == agent_id]:
            del self.holder[msg_id]
