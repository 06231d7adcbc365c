"""The event log on JetStream: guarded appends and per-aggregate reads."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from infra import events as ev

if TYPE_CHECKING:
    from nats.js import JetStreamContext

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
class Appended:
    seq: int
    duplicate: bool


class EventLog:
    """Appends events to QG_EVENTS and reads one aggregate's events back."""

    def __init__(self, js: JetStreamContext, timeout_s: float = 5.0) -> None:
        self._js = js
        self._timeout_s = timeout_s

    async def append(
        self, event: ev.Event, *, msg_id: str | None = None, expected_seq: int | None = None
    ) -> Appended:
        """Append one event; `expected_seq` guards the subject (0: it must be empty)."""
        headers: dict[str, str] = {}
        if msg_id is not None:
            headers[api.Header.MSG_ID] = msg_id
        if expected_seq is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_seq)
        subject = ev.subject_of(event)
        try:
            ack = await self._js.publish(
                subject,
                ev.encode(event),
                timeout=self._timeout_s,
                stream=ev.EVENTS_STREAM,
                headers=headers or None,
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise ConcurrencyConflict(subject, expected_seq or 0) from exc
            raise
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def append_many(self, events: list[ev.Event]) -> list[int]:
        """Append unguarded events with many in flight; returns their sequences in order."""
        futures = [
            await self._js.publish_async(ev.subject_of(e), ev.encode(e), stream=ev.EVENTS_STREAM)
            for e in events
        ]
        acks = await asyncio.gather(*futures)
        return [ack.seq for ack in acks]

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
