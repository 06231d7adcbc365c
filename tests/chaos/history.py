"""The whole QG_EVENTS stream read back by the test, and the promises checked on it:
every accepted job has exactly one terminal event, no job has two verdicts, every job's
events are a legal lifecycle, no agent installed a build for a batch it had not claimed,
and every retry follows the event that explains it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from nats.js import api

from infra import events as ev
from infra import lifecycle

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from nats.js import JetStreamContext

    from tests.chaos.workload import Spec

FETCH_BATCH = 1000
POLL_S = 0.5
STALL_S = 15.0
"""No event at all for this long while jobs are unfinished: they are stuck."""
FINISH_TIMEOUT_S = 120.0
TERMINAL = (ev.JobPassed, ev.JobFailed, ev.JobDead, ev.JobCancelled)
VERDICTS = (ev.JobPassed, ev.JobFailed)


@dataclass
class History:
    """Every event of the stream in order, and each job's own events."""

    events: list[tuple[int, ev.Event]] = field(default_factory=list)
    jobs: dict[str, list[tuple[int, ev.JobEvent]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    last_seq: int = 0
    undecodable: list[str] = field(default_factory=list)
    """Messages on the event subjects that are not events."""

    async def catch_up(self, js: JetStreamContext) -> None:
        """Read the events stored since the last call, through an ephemeral consumer."""
        sub = await js.pull_subscribe(
            ev.EVENT_SUBJECTS,
            stream=ev.EVENTS_STREAM,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.last_seq + 1,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=10.0,
            ),
        )
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                try:
                    msgs = await sub.fetch(min(pending, FETCH_BATCH), timeout=2.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    return
                for msg in msgs:
                    self._add(msg.metadata.sequence.stream, msg.subject, msg.data)
                pending = msgs[-1].metadata.num_pending
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def _add(self, seq: int, subject: str, data: bytes) -> None:
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        try:
            event = ev.decode(data)
        except msgspec.DecodeError as exc:
            self.undecodable.append(f"seq {seq} on {subject}: {exc}")
            return
        self.events.append((seq, event))
        if isinstance(event, ev.JobEvent):
            self.jobs[event.job_id].append((seq, event))

    async def until_finished(
        self,
        js: JetStreamContext,
        job_ids: Collection[str],
        stall_s: float = STALL_S,
        timeout_s: float = FINISH_TIMEOUT_S,
    ) -> None:
        """Follow the stream until every job has a terminal event, no event at all
        arrives for `stall_s` (the rest are stuck), or `timeout_s` has passed."""
        deadline = time.monotonic() + timeout_s
        last_growth, last_seq = time.monotonic(), -1
        while True:
            await self.catch_up(js)
            if all(self.terminal(job_id) for job_id in job_ids):
                return
            now = time.monotonic()
            if self.last_seq != last_seq:
                last_growth, last_seq = now, self.last_seq
            if now > deadline or now - last_growth > stall_s:
                return
            await asyncio.sleep(POLL_S)

    def terminal(self, job_id: str) -> bool:
        return any(isinstance(e, TERMINAL) for _, e in self.jobs.get(job_id, ()))

    def describe(self, job_id: str, last: int = 6) -> str:
        """One line about a job: its last events, with their agents."""
        tags = []
        for _, event in self.jobs.get(job_id, [])[-last:]:
            agent = getattr(event, "agent_id", None)
            tags.append(ev.tag_of(event) + (f"({agent})" if agent else ""))
        return f"{job_id}: {' '.join(tags) or 'no events'}"


class Unfinished(AssertionError):
    """Accepted jobs never reached a terminal event, though every other promise held."""


@dataclass
class Audit:
    """What the checks found."""

    jobs: int = 0
    lost: list[str] = field(default_factory=list)
    """Accepted jobs without a terminal event."""
    duplicated: list[str] = field(default_factory=list)
    """Jobs with more than one terminal event or more than one verdict."""
    problems: list[str] = field(default_factory=list)
    """Any other broken promise, one line each."""
    infra_retries: int = 0
    test_retries: int = 0
    installs: int = 0
    dead: int = 0

    @property
    def retries(self) -> int:
        return self.infra_retries + self.test_retries

    def check_promises(self, summary: str) -> None:
        """No job has two terminal events or verdicts, and no other promise broke."""
        broken = [*(f"duplicated: {job}" for job in self.duplicated), *self.problems]
        assert broken == [], f"{summary}\n" + "\n".join(broken[:30])

    def check_finished(self) -> None:
        """Every accepted job reached a terminal event."""
        if self.lost:
            lines = "\n".join(self.lost[:15])
            raise Unfinished(f"{len(self.lost)} of {self.jobs} jobs never finished:\n{lines}")


def audit(history: History, expected: Mapping[str, Spec]) -> Audit:
    """Check every promise over the stream; `expected` maps each accepted job id to its
    spec (a job on the stream that nobody saw accepted is checked all the same)."""
    found = Audit(jobs=len(expected))
    found.problems += [f"not an event: {what}" for what in history.undecodable]
    for job_id in sorted(set(expected) | set(history.jobs)):
        _audit_job(found, history, job_id, expected.get(job_id))
    _audit_installs(found, history)
    return found


def _audit_job(found: Audit, history: History, job_id: str, spec: Spec | None) -> None:
    pairs = history.jobs.get(job_id, [])
    events = [event for _, event in pairs]
    where = history.describe(job_id)
    submitted = sum(isinstance(e, ev.JobSubmitted) for e in events)
    terminal = [e for e in events if isinstance(e, TERMINAL)]
    if submitted != 1:
        found.problems.append(f"submitted {submitted} times: {where}")
    if not terminal:
        found.lost.append(where)
    if len(terminal) > 1 or sum(isinstance(e, VERDICTS) for e in events) > 1:
        found.duplicated.append(where)
    try:
        lifecycle.fold(pairs)
    except lifecycle.IllegalTransition as exc:
        found.problems.append(f"illegal lifecycle ({exc}): {where}")
    test_retries = 0
    for before, event in itertools.pairwise(events):
        if not isinstance(event, ev.JobRetried):
            continue
        if isinstance(before, ev.JobErrored):
            found.infra_retries += 1
        elif event.test_failed and isinstance(before, ev.JobStarted):
            found.test_retries += 1
            test_retries += 1
        else:
            found.problems.append(f"unexplained retry after {ev.tag_of(before)}: {where}")
    if any(isinstance(e, ev.JobDead) for e in terminal):
        found.dead += 1
    if any(isinstance(e, ev.JobCancelled) for e in terminal):
        found.problems.append(f"cancelled, though nobody cancelled it: {where}")
    if spec is not None:
        _audit_verdict(found, spec, terminal, test_retries, where)


def _audit_verdict(
    found: Audit, spec: Spec, terminal: Sequence[ev.Event], test_retries: int, where: str
) -> None:
    """The simulated runner passes every test except the doomed ones, which fail every
    time: a doomed job uses all its flaky-test retries, a passing one none."""
    verdicts = [e for e in terminal if isinstance(e, VERDICTS)]
    if not verdicts:
        return
    if isinstance(verdicts[-1], ev.JobPassed) != spec.expect_passed:
        found.problems.append(f"wrong verdict (expected passed={spec.expect_passed}): {where}")
    wanted = 0 if spec.expect_passed else spec.body["retries"]
    if test_retries != wanted:
        found.problems.append(f"{test_retries} test retries, expected {wanted}: {where}")


def _audit_installs(found: Audit, history: History) -> None:
    """An agent installs a batch's build only after a claim assigned it one of the
    batch's jobs, since it (re)registered."""
    claimed: dict[str, set[str]] = defaultdict(set)
    for seq, event in history.events:
        match event:
            case ev.AgentRegistered():
                claimed[event.agent_id] = set()
            case ev.JobAssigned():
                claimed[event.agent_id].add(event.batch_id)
            case ev.BuildInstalled():
                found.installs += 1
                if event.batch_id not in claimed[event.agent_id]:
                    found.problems.append(
                        f"seq {seq}: {event.agent_id} installed batch {event.batch_id}"
                        " without a claim"
                    )
