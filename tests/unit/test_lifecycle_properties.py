"""Nothing lost, nothing run twice: random interleavings of submits, cancels, claims,
installs, verdicts, infrastructure errors with retry backoff, pauses, crashes, lost-agent
sweeps and stale replays, checked against the real fold, decisions, projection and
grouping.

The orchestrator side runs for real (`JobService.submit/cancel`, `ClaimService.claim`,
`LostAgentSweeper.sweep`, `requeue.error_job`, `JobsProjection`, `Grouping`) on the
in-memory infrastructure of `lifecycle_model`, with a model clock as `ev.utcnow`. Agents
are modelled step by step after `agent.worker.Agent`: claim, install once, start, then a
verdict from `lifecycle.on_test_failure` or an error through `requeue.error_job`, each a
guarded append from the agent's own (possibly stale) view of the job.

Checked on every append: the event is legal in the fold; nothing follows a final event;
only the agent holding an attempt starts, errors or judges it, and only a running one;
every attempt increment is a `JobRetried` with a reason, caused by a test failure or a
`JobErrored`; no claim during a retry backoff; no `BuildInstalled` without a claim of that
batch by that agent; a guarded append lands exactly when the writer's view is current.
After every step: queued jobs are pending in the grouping under a live ticket (or one due
when their backoff ends); a caught-up read model equals the fold. At the end, with no more
crashes, the agents run everything: each job has exactly one final event, a fresh replay
and the read model equal the incremental fold. Behaviours the system does not survive yet
are in subclasses, each behind a strict xfail.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import functools
import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast
from unittest import mock

import msgspec
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from infra import api, lifecycle, requeue, rpc
from infra import events as ev
from infra import nats as qnats
from infra.eventlog import Append, ConcurrencyConflict
from infra.events import JobStatus
from orchestrator import claims, domain, service, sweeper
from projections.grouping import Grouping
from projections.jobs import JobsProjection
from tests.unit import lifecycle_model as model

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from nats.js.kv import KeyValue

    from infra import db

P = ParamSpec("P")
R = TypeVar("R")

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MAX_ATTEMPTS = 3
BACKOFF = lifecycle.Backoff(base_s=1.0, cap_s=8.0)
MAX_JOBS = 10
SETTLE_STEPS = 500
AGENT_TARGETS: dict[str, tuple[ev.Target, ...]] = {
    "a1": (ev.Target.EMULATOR, ev.Target.DEVICE),
    "a2": (ev.Target.DEVICE,),
    "a3": (ev.Target.EMULATOR,),
}
TERMINAL_EVENTS = (ev.JobPassed, ev.JobFailed, ev.JobDead, ev.JobCancelled)
VERDICTS = (ev.JobPassed, ev.JobFailed)

agents = st.sampled_from(sorted(AGENT_TARGETS))


class Outcome(enum.Enum):
    """What the device does next: a test passes, fails or breaks the runner; an install
    fails on ERROR only."""

    OK = "ok"
    FAIL = "fail"
    ERROR = "error"


class Disturbance(enum.Enum):
    """What may happen to an agent process between its steps."""

    PAUSE = "pause"
    RESUME = "resume"
    CRASH = "crash"
    STOP = "stop"


@dataclass
class AgentModel:
    """One agent process's memory, as `Agent._work_batch` holds it."""

    agent_id: ev.AgentId
    targets: tuple[ev.Target, ...]
    up: bool = True
    beating: bool = True
    """Its registry key is alive; False while it is paused or cut off from the registry."""
    ticket: ev.WorkTicket | None = None
    claimed: list[lifecycle.JobState] = field(default_factory=list)
    must_install: bool = False
    running: lifecycle.JobState | None = None
    installed: set[tuple[str, str, str]] = field(default_factory=set)
    last_claimed: tuple[ev.JobId, ...] = ()
    """The jobs of its last claim that assigned any (`Agent._last_claimed`)."""
    queued_after: int = 0
    """The batch's jobs queued beyond them, as that claim saw it."""

    def forget(self) -> None:
        self.ticket, self.claimed, self.must_install, self.running = None, [], False, None
        self.installed.clear()
        self.last_claimed, self.queued_after = (), 0


def install_key(ticket: ev.WorkTicket) -> tuple[str, str, str]:
    """What `Agent._installed` remembers of an installed build."""
    return (ticket.org_id, ticket.app_version_id, ticket.target.value)


def check_transition(before: lifecycle.JobState, event: ev.JobEvent, max_attempts: int) -> None:
    """What the fold allows but no writer may do: verdicts, errors and starts only by the
    agent holding that attempt; every attempt increment explained by its cause."""
    holder = (before.agent_id, before.attempt)
    match event:
        case ev.JobAssigned():
            assigned = (event.attempt, event.batch_id)
            assert assigned == (before.attempt, before.batch_id), "assigned the wrong attempt"
            wait = before.not_before
            assert wait is None or wait <= event.at, "claimed during its retry backoff"
        case ev.JobStarted() | ev.JobErrored():
            assert (event.agent_id, event.attempt) == holder, f"{event!r} by a non-holder"
        case ev.JobReleased():
            assert event.agent_id == before.agent_id, "released by a non-holder"
        case ev.JobPassed() | ev.JobFailed():
            assert before.status is JobStatus.RUNNING, f"verdict for a {before.status} job"
            assert (event.agent_id, event.attempt) == holder, "verdict for another's attempt"
            if isinstance(event, ev.JobFailed):
                assert before.test_failures >= before.retries, "failed with a retry left"
        case ev.JobRetried():
            assert event.attempt == before.attempt + 1, "an attempt skipped or repeated"
            assert event.reason, "a retry without a reason"
            if event.test_failed:
                assert before.status is JobStatus.RUNNING, "a test retry of a job not running"
                assert before.test_failures < before.retries, "a test retry beyond `retries`"
            else:
                assert before.status is JobStatus.ERRORED, "a requeue without a JobErrored"
                # Runs that ended in a test failure are not infrastructure's to count.
                infra_attempts = before.attempt - before.test_failures
                assert infra_attempts < max_attempts, "a requeue beyond the attempt limit"
        case ev.JobDead():
            assert before.status is JobStatus.ERRORED, "dead without a JobErrored"
            infra_attempts = before.attempt - before.test_failures
            assert infra_attempts >= max_attempts, "dead before the attempt limit"


def step(method: Callable[P, R]) -> Callable[P, R]:
    """Mark the machine broken when a step fails, so that teardown does not settle a
    broken run and hide the first failure behind a second one."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except BaseException:
            cast("LifecycleMachine", args[0]).broken = True
            raise

    return wrapper


class LifecycleMachine(RuleBasedStateMachine):
    """Interleavings that the system is meant to survive."""

    restart_before_sweep = False
    """May a crashed agent come back (same id) before the sweeper requeued its jobs?"""
    lose_claim_replies = False
    """May a claim's reply be lost after its `JobAssigned`s were appended?"""
    die_mid_requeue = False
    """May a writer die between `JobErrored` and its `JobRetried`/`JobDead`?"""
    restart_grouping = False
    """May the grouping projector restart (rebuild from the log, re-offer live tickets)?"""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.clock = model.Clock(T0)
        self.loop = asyncio.Runner()
        self._patches = contextlib.ExitStack()
        # Every writer reads the model clock; nothing else moves during a step, so a claim
        # either finds the read model caught up or times out at once instead of sleeping.
        self._patches.enter_context(mock.patch.object(ev, "utcnow", self.clock.now))
        self._patches.enter_context(mock.patch.object(claims, "CLAIM_CATCH_UP_S", 0.0))
        try:
            self._start()
        except BaseException:
            self._close()
            raise

    def _start(self) -> None:
        self.log = model.MemoryLog()
        self.table = model.JobsTable(self.log)
        self.registry = model.MemoryRegistry()
        self.queue = model.WorkQueue(self.clock, qnats.DUPLICATE_WINDOW_S)
        self.grouping = Grouping()
        pool = cast("db.Pool", model.MemoryPool(self.table))
        self.service = service.JobService(self.log, pool)
        self.claim_service = claims.ClaimService(self.log, pool, MAX_ATTEMPTS, BACKOFF)
        self.sweeper = sweeper.LostAgentSweeper(
            self.log,
            pool,
            cast("KeyValue", self.registry),
            MAX_ATTEMPTS,
            interval_s=1.0,
            backoff=BACKOFF,
        )
        self.truth: dict[str, lifecycle.JobState] = {}
        """Every job folded event by event as appends land: the writers' ground truth."""
        self.terminals: Counter[str] = Counter()
        self.claims: set[tuple[str, str]] = set()
        self.specs: list[api.JobSpec] = []
        self.job_ids: list[str] = []
        self.last_job_seq = 0
        self.log.listeners.append(self._on_append)
        self.agents = {a: AgentModel(ev.AgentId(a), t) for a, t in AGENT_TARGETS.items()}
        for agent in self.agents.values():
            self._register(agent)

    def _close(self) -> None:
        self.loop.close()
        self._patches.close()

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        return self.loop.run(coro)

    # -- what every append must satisfy -------------------------------------------------

    def _on_append(self, seq: int, event: ev.Event) -> None:
        if isinstance(event, ev.JobSubmitted):
            assert event.job_id not in self.truth, "a job was submitted twice"
            self.truth[event.job_id] = lifecycle.start(event, seq)
        elif isinstance(event, ev.JobEvent):
            before = self.truth[event.job_id]
            assert not before.terminal, f"{ev.tag_of(event)} after the final {before.status}"
            check_transition(before, event, MAX_ATTEMPTS)
            self.truth[event.job_id] = lifecycle.evolve(before, event, seq)
            if isinstance(event, TERMINAL_EVENTS):
                self.terminals[event.job_id] += 1
            if isinstance(event, ev.JobAssigned):
                self.claims.add((event.batch_id, event.agent_id))
        elif isinstance(event, ev.BuildInstalled):
            claim = (event.batch_id, event.agent_id)
            assert claim in self.claims, f"{event.agent_id} installed unclaimed {event.batch_id}"
        if isinstance(event, ev.JobEvent):
            self.last_job_seq = seq
        for ticket in self.grouping.apply(seq, event):
            self.queue.publish(ticket)

    # -- commands -----------------------------------------------------------------------

    @precondition(lambda self: len(self.specs) < MAX_JOBS)
    @rule(
        jobs=st.lists(
            st.tuples(
                st.sampled_from([ev.Target.EMULATOR, ev.Target.DEVICE]),
                st.sampled_from(["v1", "v2"]),
                st.integers(1, 5),
                st.integers(0, 2),
            ),
            min_size=1,
            max_size=3,
        )
    )
    @step
    def submit(self, jobs: list[tuple[ev.Target, str, int, int]]) -> None:
        """CI submits a few jobs in one request: (target, build, priority, retries)."""
        specs = [
            api.JobSpec(
                org_id="acme",
                app_version_id=build,
                test_path=f"tests/t{n}.spec.js",
                target=target,
                priority=priority,
                retries=retries,
                idempotency_key=f"k{n}",  # deterministic job ids: runs replay exactly
            )
            for n, (target, build, priority, retries) in enumerate(jobs, start=len(self.specs))
        ]
        views = self._run(self.service.submit_many(specs))
        assert [v.status for v in views] == [JobStatus.QUEUED] * len(specs)
        self.specs += specs
        self.job_ids += [v.job_id for v in views]

    @precondition(lambda self: self.job_ids)
    @rule(index=st.integers(0, MAX_JOBS - 1))
    @step
    def cancel(self, index: int) -> None:
        job_id = self.job_ids[index % len(self.job_ids)]
        was = self.truth[job_id]
        try:
            view = self._run(self.service.cancel(job_id))
        except domain.JobFinished:
            assert was.terminal
            return
        assert not was.terminal
        assert view.status is JobStatus.CANCELLED

    # -- agents -------------------------------------------------------------------------

    @rule(
        order=st.permutations(sorted(AGENT_TARGETS)),
        moves=st.lists(st.sampled_from([*Outcome, None]), min_size=3, max_size=6),
        caught_up=st.booleans(),
        elapsed=st.sampled_from([0.0, 1.0, 4.0]),
    )
    @step
    def agents_work(
        self, order: list[str], moves: list[Outcome | None], caught_up: bool, elapsed: float
    ) -> None:
        """Time passes; then the agents, taking turns in some order, each take a step or
        (None) are slow this time. `caught_up`: the `jobs` projector keeps up meanwhile
        (else a claim may find the read model behind its ticket and be refused)."""
        self._pass_time(elapsed)
        for agent, move in zip(itertools.cycle(order), moves):
            if caught_up:
                self._project()
            if move is not None:
                self._work(self.agents[agent], move)

    def _work(self, a: AgentModel, outcome: Outcome) -> bool:
        """One step of `Agent._work_batch`; False when the agent had nothing to do. A
        crashed agent's next step is its supervisor restarting it, when it may."""
        if not a.up:
            return self._restart(a.agent_id)
        if a.running is not None:
            self._finish(a, outcome)
        elif a.must_install:
            self._install(a, outcome)
        elif a.claimed:
            job = a.claimed.pop(0)
            started = ev.JobStarted(
                at=ev.utcnow(), job_id=job.job_id, agent_id=a.agent_id, attempt=job.attempt
            )
            a.running = self._append_as(job, started)
            if not a.claimed and a.running is not None and a.queued_after:
                self._claim(a)  # the next claim, made while the last job runs
        elif a.ticket is not None:
            self._claim(a)
        else:
            a.ticket = self.queue.take(a.agent_id, a.targets)
            return a.ticket is not None
        return True

    def _append_as(self, view: lifecycle.JobState, event: ev.JobEvent) -> lifecycle.JobState | None:
        """`Agent._append`: guarded by the writer's view; a refusal means stand down."""
        stale = self.truth[view.job_id].version != view.version
        result = self.log.put(Append(event, expected_seq=view.version))
        if isinstance(result, ConcurrencyConflict):
            assert stale, "a guarded append from a current view was refused"
            return None
        assert not stale, "a guarded append from a stale view landed"
        return lifecycle.evolve(view, event, result.seq)

    def _error(self, a: AgentModel, job: lifecycle.JobState, reason: str) -> None:
        self._run(
            requeue.error_job(self.log, job, a.agent_id, reason, MAX_ATTEMPTS, backoff=BACKOFF)
        )

    def _finish(self, a: AgentModel, outcome: Outcome) -> None:
        job, a.running = cast("lifecycle.JobState", a.running), None
        if outcome is Outcome.ERROR:
            self._error(a, job, "runner failed: device disconnected")
            return
        now = ev.utcnow()
        verdict: ev.JobEvent = (
            ev.JobPassed(
                at=now, job_id=job.job_id, agent_id=a.agent_id, attempt=job.attempt, duration_s=1.0
            )
            if outcome is Outcome.OK
            else lifecycle.on_test_failure(job, a.agent_id, "assertion failed", 1.0, now)
        )
        self._append_as(job, verdict)

    def _install(self, a: AgentModel, outcome: Outcome) -> None:
        ticket = cast("ev.WorkTicket", a.ticket)
        a.must_install = False
        if outcome is Outcome.ERROR:
            jobs, a.claimed = a.claimed, []
            for job in jobs:
                self._error(a, job, "install failed: adb timeout")
            return
        a.installed.add(install_key(ticket))
        installed = ev.BuildInstalled(
            at=ev.utcnow(),
            batch_id=ticket.batch_id,
            agent_id=a.agent_id,
            app_version_id=ticket.app_version_id,
            target=ticket.target,
            duration_s=5.0,
        )
        self.log.put(Append(installed))

    def _claim_rpc(self, a: AgentModel) -> rpc.ClaimResponse:
        ticket = cast("ev.WorkTicket", a.ticket)
        request = rpc.ClaimRequest(
            agent_id=a.agent_id,
            batch_id=ticket.batch_id,
            ticket=ticket.ticket,
            as_of_seq=ticket.as_of_seq,
            holding=a.last_claimed,
        )
        response = self._run(self.claim_service.claim(request))
        return msgspec.json.decode(msgspec.json.encode(response), type=rpc.ClaimResponse)

    def _claim(self, a: AgentModel) -> None:
        ticket = cast("ev.WorkTicket", a.ticket)
        response = self._claim_rpc(a)
        if response.error is not None:
            return  # the agent keeps the ticket and asks again
        if not response.jobs:
            self.queue.ack(ticket)  # spent: the claim recorded BatchDrained
            a.ticket = None
        else:
            a.claimed = [job.state for job in response.jobs]
            a.last_claimed = tuple(job.job_id for job in a.claimed)
            a.queued_after = response.queued_after
            a.must_install = install_key(ticket) not in a.installed

    def _register(self, a: AgentModel) -> None:
        registered = ev.AgentRegistered(
            at=ev.utcnow(), agent_id=a.agent_id, targets=a.targets, runner="simulated"
        )
        self.log.put(Append(registered))
        self.registry.alive.add(a.agent_id)
        a.up = a.beating = True

    @rule(agent=agents, how=st.sampled_from(Disturbance))
    @step
    def disturb(self, agent: str, how: Disturbance) -> None:
        {
            Disturbance.PAUSE: self._pause,
            Disturbance.RESUME: self._resume,
            Disturbance.CRASH: self._crash,
            Disturbance.STOP: self._stop,
        }[how](agent)

    def _pause(self, agent: str) -> None:
        """A GC pause or a cut to the registry: the key and the ticket lapse, the memory
        stays, and the agent may act on it again later."""
        a = self.agents[agent]
        if a.up and a.beating:
            a.beating = False
            self.registry.alive.discard(agent)
            self.queue.redeliver(agent)

    def _resume(self, agent: str) -> None:
        a = self.agents[agent]
        if a.up and not a.beating:
            a.beating = True
            self.registry.alive.add(agent)

    def _crash(self, agent: str) -> None:
        """kill -9: memory gone, the key expires, the ticket is redelivered."""
        a = self.agents[agent]
        if a.up:
            a.up = a.beating = False
            a.forget()
            self.registry.alive.discard(agent)
            self.queue.redeliver(agent)

    def _holds_jobs(self, agent_id: str) -> bool:
        return any(
            s.agent_id == agent_id and s.status in (JobStatus.ASSIGNED, JobStatus.RUNNING)
            for s in self.truth.values()
        )

    def _restart(self, agent: str) -> bool:
        """The same agent id comes back: in this machine only once nothing in the log is
        held by it any more (its key expired and a sweep requeued its jobs)."""
        a = self.agents[agent]
        if a.up or (self._holds_jobs(agent) and not self.restart_before_sweep):
            return False
        a.forget()
        self._register(a)
        return True

    def _stop(self, agent: str) -> None:
        """Graceful stop between tests: unstarted jobs released, ticket given back."""
        a = self.agents[agent]
        if not (a.up and a.beating and a.running is None):
            return
        for job in a.claimed:
            released = ev.JobReleased(
                at=ev.utcnow(), job_id=job.job_id, agent_id=a.agent_id, reason="agent stopping"
            )
            self._append_as(job, released)
        if a.ticket is not None:
            self.queue.nak(a.ticket, agent)
        self.log.put(Append(ev.AgentStopped(at=ev.utcnow(), agent_id=a.agent_id)))
        self.registry.alive.discard(agent)
        a.up = a.beating = False
        a.forget()

    # -- orchestrator timers and projectors ---------------------------------------------

    @rule(limit=st.integers(0, 6), sweep=st.booleans())
    @step
    def orchestrate(self, limit: int, sweep: bool) -> None:
        """The `jobs` projector applies its next batch of job events; the lost-agent
        sweep runs."""
        self._project(limit)
        if sweep:
            self._run(self.sweeper.sweep())

    def _project(self, limit: int | None = None) -> None:
        pending = [
            (seq, e)
            for seq, e in self.log.entries
            if seq > self.table.checkpoint and isinstance(e, ev.JobEvent)
        ][:limit]
        if pending:
            conn = cast("db.Connection", self.table)
            self._run(JobsProjection().apply(conn, pending))
            self.table.checkpoint = pending[-1][0]

    @precondition(lambda self: self.specs)
    @rule(submit=st.booleans(), index=st.integers(0, 1000))
    @step
    def replay(self, submit: bool, index: int) -> None:
        """Duplicates change nothing: CI retries a submit with its idempotency key, or a
        writer re-sends one of its earlier guarded appends, old expected seq and all."""
        before = len(self.log.entries)
        if submit:
            n = index % len(self.specs)
            view, created = self._run(self.service.submit(self.specs[n]))
            assert (view.job_id, created) == (self.job_ids[n], False)
        else:
            old = self.log.guarded[index % len(self.log.guarded)]
            result = self.log.put(old)
            assert isinstance(result, ConcurrencyConflict) or result.duplicate
        assert len(self.log.entries) == before

    def _pass_time(self, seconds: float) -> None:
        """The clock moves on; the grouping projector's timer issues the tickets of batches
        whose retry backoff is over."""
        self.clock.advance(seconds)
        for decision in self.grouping.due(self.clock.now()):
            self.log.put(Append(decision))  # folded back by _on_append, which publishes

    @precondition(lambda self: self.restart_grouping)
    @rule()
    @step
    def grouping_restarts(self) -> None:
        """`GroupingProjector.run` after a restart: fold the log from the start, re-offer
        the live tickets, then tick."""
        self.grouping = Grouping()
        for seq, event in self.log.entries:
            self.grouping.apply(seq, event)
        for ticket in self.grouping.live_tickets():
            self.queue.publish(ticket)
        self._pass_time(0.0)

    # -- known-defect behaviours, enabled only by the subclasses below ------------------

    @precondition(lambda self: self.die_mid_requeue)
    @rule(agent=agents)
    @step
    def die_while_requeueing(self, agent: str) -> None:
        """The runner breaks, and the agent dies right after its `JobErrored` landed."""
        a = self.agents[agent]
        if a.up and a.running is not None:
            self.log.crash_after = 1
            try:
                self._finish(a, Outcome.ERROR)
            except model.Crash:
                self._crash(agent)
            finally:
                self.log.crash_after = None

    @precondition(lambda self: self.die_mid_requeue)
    @rule(appends=st.integers(0, 4))
    @step
    def sweep_and_die(self, appends: int) -> None:
        """The orchestrator dies part-way through a sweep."""
        self.log.crash_after = appends
        try:
            self._run(self.sweeper.sweep())
        except model.Crash:
            pass
        finally:
            self.log.crash_after = None

    @precondition(lambda self: self.lose_claim_replies)
    @rule(agent=agents)
    @step
    def claim_reply_lost(self, agent: str) -> None:
        """The claim assigns, but its reply never reaches the agent (request timeout); the
        agent keeps the ticket and asks again."""
        a = self.agents[agent]
        if a.up and a.ticket is not None and not a.claimed and a.running is None:
            self._claim_rpc(a)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    @step
    def every_queued_job_is_pending_under_a_live_ticket(self) -> None:
        queued: defaultdict[str, set[str]] = defaultdict(set)
        for s in self.truth.values():
            if s.status is JobStatus.QUEUED:
                queued[s.batch_id].add(s.job_id)
        assert set(queued) <= set(self.grouping.batches)
        waiting: list[str] = []
        for batch_id, batch in self.grouping.batches.items():
            assert set(batch.pending) == queued[batch_id], "grouping and jobs disagree"
            if batch.pending and batch.ticket_live:
                # Any of them: a split's ticket may be spent while the one before is worked.
                in_queue = [n for n in batch.live if f"{batch_id}:{n}" in self.queue.tickets]
                assert in_queue, "live ticket lost"
            elif batch.pending:
                waiting.append(batch_id)
        if waiting:  # each must get its ticket once the longest backoff is over
            later = self.clock.now() + timedelta(seconds=BACKOFF.cap_s)
            due = {d.batch_id for d in copy.deepcopy(self.grouping).due(later)}
            assert set(waiting) <= due, "queued jobs that no ticket will ever offer"

    @invariant()
    @step
    def a_caught_up_read_model_equals_the_fold(self) -> None:
        if self.table.checkpoint == self.last_job_seq:
            self._assert_read_model()

    def _assert_read_model(self) -> None:
        rows = {job_id: lifecycle.from_row(row) for job_id, row in self.table.rows.items()}
        wrong = {j: (rows.get(j), s) for j, s in self.truth.items() if rows.get(j) != s}
        assert rows.keys() == self.truth.keys(), "the read model lost or invented a job"
        assert not wrong, f"read model row != fold: {wrong}"

    # -- the end: no more crashes, every job runs to its verdict --------------------------

    def teardown(self) -> None:
        try:
            if not self.broken:
                self._settle()
                self._assert_settled()
        finally:
            self._close()

    def _settle(self) -> None:
        for name in self.agents:
            self._resume(name)
        self._project()
        self._run(self.sweeper.sweep())  # whatever crashed agents held is requeued
        for a in self.agents.values():
            if not a.up:
                self._register(a)
        idle = 0
        for _ in range(SETTLE_STEPS):
            self._project()
            stepped = [self._work(a, Outcome.OK) for a in self.agents.values()]
            idle = 0 if any(stepped) else idle + 1
            if idle == 2:
                return
            if idle:
                self._pass_time(BACKOFF.cap_s)  # whatever waits out a backoff may run now
                self._project()
                if self._run(self.sweeper.sweep()):  # the sweep runs on a timer, as in serve
                    idle = 0
        raise AssertionError("the system did not settle")

    def _assert_settled(self) -> None:
        stuck = {
            job_id: [ev.tag_of(e) for _, e in self.log.job_events(job_id)]
            for job_id, s in self.truth.items()
            if not s.terminal
        }
        assert not stuck, f"jobs that never reach a final state: {stuck}"
        for job_id, state in self.truth.items():
            events = self.log.job_events(job_id)
            assert self.terminals[job_id] == 1
            assert sum(isinstance(e, VERDICTS) for _, e in events) <= 1
            retried = sum(isinstance(e, ev.JobRetried) for _, e in events)
            assert state.attempt == 1 + retried, "an attempt without its JobRetried"
            assert lifecycle.fold(events) == state, "a fresh replay disagrees"
        self._project()
        self._assert_read_model()


class RestartBeforeSweepMachine(LifecycleMachine):
    """A supervisor restarts a crashed agent (ids are `hostname-slot`) within its key's
    TTL: the key never lapses, so no sweep ever requeues what the old process held."""

    restart_before_sweep = True


class LostClaimReplyMachine(LifecycleMachine):
    """The claim RPC times out on the agent (10 s) while the orchestrator, waiting up to
    5 s for the read model and then appending, still assigns the jobs."""

    lose_claim_replies = True


class DieMidRequeueMachine(LifecycleMachine):
    """kill -9, or an append timing out, inside `requeue.error_job`."""

    die_mid_requeue = True


class GroupingRestartMachine(LifecycleMachine):
    """The grouping projector restarts and rebuilds its fold from the log."""

    restart_grouping = True


SETTINGS = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
)
# The known defects only need to be found, not shrunk, for the suite to stay green.
DEFECT_SETTINGS = settings(SETTINGS, phases=[Phase.generate])


def test_nothing_is_lost_and_nothing_runs_twice() -> None:
    run_state_machine_as_test(LifecycleMachine, settings=SETTINGS)


def test_an_agent_restarted_before_its_key_expired_does_not_strand_its_jobs() -> None:
    run_state_machine_as_test(RestartBeforeSweepMachine, settings=DEFECT_SETTINGS)


def test_a_lost_claim_reply_strands_no_job() -> None:
    run_state_machine_as_test(LostClaimReplyMachine, settings=DEFECT_SETTINGS)


def test_a_claim_asked_again_gets_back_the_jobs_whose_answer_was_lost() -> None:
    """Spelled out too: the lost answer, then the agent asking again once the read model
    shows the jobs assigned to it, and again before it does."""
    for caught_up in (True, False):
        machine = LostClaimReplyMachine()
        try:
            machine.submit([(ev.Target.EMULATOR, "v1", 3, 0), (ev.Target.EMULATOR, "v1", 3, 0)])
            machine.agents_work(["a1"], [Outcome.OK], True, 0.0)  # takes the ticket
            machine.claim_reply_lost("a1")
            machine.agents_work(["a1"], [Outcome.OK] * 6, caught_up, 0.0)
            finished = [s for s in machine.truth.values() if s.status is JobStatus.PASSED]
            assert len(finished) == 2, "the agent did not get its jobs back"
            assert {s.agent_id for s in finished} == {"a1"}
        finally:
            machine.teardown()


def test_a_writer_dying_between_errored_and_requeue_does_not_strand_the_job() -> None:
    run_state_machine_as_test(DieMidRequeueMachine, settings=DEFECT_SETTINGS)


def test_a_grouping_restart_after_a_backoff_ticket_does_not_strand_the_next_job() -> None:
    """Too long a chain for the random search to find, so spelled out."""
    machine = GroupingRestartMachine()
    ok, error = Outcome.OK, Outcome.ERROR

    def a3(*moves: Outcome, elapsed: float = 0.0) -> None:
        machine.agents_work(["a3"], list(moves), True, elapsed)

    try:
        machine.submit([(ev.Target.EMULATOR, "v1", 3, 0)])
        a3(ok, ok, ok, ok)  # takes ticket 1, claims, installs, starts
        a3(error)  # JobErrored, JobRetried with a backoff
        a3(ok)  # claims: nothing may run yet, BatchDrained(1); the batch waits
        a3(ok, elapsed=4.0)  # backoff over: the timer issues ticket 2, a3 takes it
        a3(ok, ok, ok, ok)  # claims, starts, passes, claims: BatchDrained(2)
        machine.grouping_restarts()  # the rebuilt fold never saw ticket 2 being issued
        machine.submit([(ev.Target.EMULATOR, "v1", 3, 0)])  # "ticket 2" again: deduped
        machine.every_queued_job_is_pending_under_a_live_ticket()
    finally:
        machine.teardown()
