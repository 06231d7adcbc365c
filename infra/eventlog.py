"""The event log on JetStream: guarded appends and per-aggregate reads."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from nats.js import api
from nats.js.errors import NotFoundError

from infra import events as ev
from infra.acks import Ack, AckPipeline

if TYPE_CHECKING:
    from nats.aio.client import Client

WRONG_LAST_SEQUENCE = 10071


class EventLogError(Exception):
    """The event log refused or failed an operation."""


class ConcurrencyConflict(EventLogError):
    """The subject moved on since it was read: someone else wrote first."""

    def __init__(self, subject: str, expected: int) -> None:
        super().__init__(f"{subject} is no longer at sequence {expected}")
        self.subject = subject
        self.expected = expected


@dataclass(frozen=True, slots=True)
class Append:
    """One event to append, with its dedup id and its subject guard (0: the subject must
    still be empty)."""

    event: ev.Event
    msg_id: str | None = None
    expected_seq: int | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        if self.msg_id is not None:
            headers[api.Header.MSG_ID] = self.msg_id
        if self.expected_seq is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(self.expected_seq)
        return headers or None


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    duplicate: bool


def _outcome(append: Append, ack: Ack) -> Appended | ConcurrencyConflict:
    """The result of one append; a wrong-last-sequence refusal is a ConcurrencyConflict,
    any other refusal an EventLogError."""
    if ack.error is None:
        return Appended(seq=ack.seq, duplicate=ack.duplicate)
    if ack.error.err_code == WRONG_LAST_SEQUENCE:
        return ConcurrencyConflict(ev.subject_of(append.event), append.expected_seq or 0)
    raise EventLogError(f"the event log refused an append: {ack.error.description}")


class EventLog:
    """Appends events to QG_EVENTS and reads one aggregate's events back."""

    def __init__(self, nc: Client, timeout_s: float = 5.0) -> None:
        self._js = nc.jetstream()
        self._acks = AckPipeline(nc)
        self._timeout_s = timeout_s

    async def append(
        self, event: ev.Event, *, msg_id: str | None = None, expected_seq: int | None = None
    ) -> Appended:
        """Append one event once JetStream has acknowledged it; raises ConcurrencyConflict
        when `expected_seq` no longer matches the subject."""
        [result] = await self.append_all([Append(event, msg_id, expected_seq)])
        if isinstance(result, ConcurrencyConflict):
            raise result
        return result

    async def append_all(self, appends: list[Append]) -> list[Appended | ConcurrencyConflict]:
        """Append many events with all of them in flight at once; results come in request
        order, a conflict as a value rather than raised."""
        futures = [
            await self._acks.publish(ev.subject_of(a.event), ev.encode(a.event), a.headers)
            for a in appends
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                acks = await asyncio.gather(*futures)
        except TimeoutError:
            self._acks.forget(futures)
            raise
        return [_outcome(append, ack) for append, ack in zip(appends, acks, strict=True)]

    async def last(self, subject: str) -> tuple[int, ev.Event] | None:
        """The latest event on one subject with its sequence; None when there is none."""
        try:
            msg = await self._js.get_last_msg(ev.EVENTS_STREAM, subject, direct=True)
        except NotFoundError:
            return None
        assert msg.seq is not None
        assert msg.data is not None
        try:
            return msg.seq, ev.decode(msg.data)
        except msgspec.DecodeError:
            return None

    async def read_job(self, job_id: str) -> list[tuple[int, ev.JobEvent]]:
        """Every event of one job, oldest first, with its stream sequence."""
        found = await self.read(ev.job_subject(job_id))
        return [(seq, event) for seq, event in found if isinstance(event, ev.JobEvent)]

    async def read(self, subject: str) -> list[tuple[int, ev.Event]]:
        """Every event on one subject, oldest first, with its stream sequence."""
        found: list[tuple[int, ev.Event]] = []
        seq = 1
        while True:
            try:
                msg = await self._js.get_msg(
                    ev.EVENTS_STREAM, seq=seq, subject=subject, next=True, direct=True
                )
            except NotFoundError:
                return found
            assert msg.seq is not None
            assert msg.data is not None
            # A malformed message is not an event: skip it here, as projectors do.
            with contextlib.suppress(msgspec.DecodeError):
                found.append((msg.seq, ev.decode(msg.data)))
            seq = msg.seq + 1
