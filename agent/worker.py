"""An agent: takes a dispatch ticket, claims the batch's jobs, installs the build once,
runs the tests one after another, and claims again before letting the ticket go.

Between two tests it looks for an urgent ticket (in the urgent queue, for a job submitted
at priority 5, unless `preempt_band` lets lower bands in too); when it gets one, it gives
back the jobs it has not started (`JobReleased`, no attempt counted) and works the
urgent ticket at once. A job of priority 5 thus waits for one test, not for a whole
batch. When the urgent batch takes less time than an install, the agent sets its own
batch aside (`BatchYielded` that `returns`): it keeps the ticket and comes back to the
batch afterwards, its build still installed, while another agent would install it anew
for about the same wait. Otherwise it gives the batch back (`BatchYielded`, which
spends its ticket so the jobs get a fresh one); an agent left with the last few jobs of
its batch, fewer than would pay for another agent's install, runs them first. Other
bands, band 5 reached by waiting included, wait for the batch to end: interrupting a
batch costs its build a second install when another agent picks it up, which only
urgent work is worth."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import structlog

from agent import cancels
from agent.affinity import InstallCache
from agent.output import AttemptOutput
from agent.runners import RunnerError
from agent.tickets import PREEMPT_GRACE_S, TicketSource, band_of
from infra import bands, lifecycle, logstore, requeue, rpc
from infra import events as ev
from infra import logging as qlogging
from infra.eventlog import ConcurrencyConflict, EventLogError
from infra.stopping import stopped_within

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

    from agent.runners import Runner
    from infra.eventlog import EventLog

log = structlog.get_logger(__name__)

_claim_decoder = msgspec.json.Decoder(rpc.ClaimResponse)

INSTALL_CACHE_SIZE = 8
GOODBYE_TIMEOUT_S = 2.0
"""How long a stopping agent tries to record that it stopped."""


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: ev.AgentId
    targets: tuple[ev.Target, ...]
    max_attempts: int = 3
    backoff: lifecycle.Backoff = lifecycle.Backoff()
    """Before a job that hit an infrastructure error here runs again."""
    ticket_ack_wait_s: float = 30.0
    heartbeat_ttl_s: float = 10.0
    claim_timeout_s: float = 10.0
    install_timeout_s: float = 900.0
    install_cache_size: int = INSTALL_CACHE_SIZE
    """How many installed builds the device keeps."""
    preempt_band: int = bands.URGENT
    """Tickets of this dispatch queue or higher interrupt a batch of a lower one between
    tests: by default the urgent queue only; 2 lets any higher band interrupt."""
    log_limit_bytes: int = logstore.DEFAULT_LIMIT_BYTES
    """How much of one attempt's output is kept."""


_WEIGHT = 0.2
"""Of each new duration in the agent's moving averages."""
_RETRY_FIRST_S = 0.5
_RETRY_CAP_S = 5.0
"""Between two tries of a claim, or of a batch that failed: doubling up to this."""


def _batch_keys(ticket: ev.WorkTicket) -> dict[str, str]:
    """The keys every log line about a batch carries."""
    return {"batch_id": ticket.batch_id, "org_id": ticket.org_id}


class ClaimUnanswered(Exception):
    """The claim service did not answer, or answered with an error: ask again."""


@dataclass(frozen=True)
class _Done:
    """How working a ticket ended."""

    spent: bool
    """Ack the ticket (drained or given back); else nak it for a later try."""
    urgent: Msg | None = None
    """The more urgent ticket taken between two tests or during the install: next."""
    set_aside: bool = False
    """The batch waits for this agent to work `urgent` and come back to it."""


class Agent:
    """One device slot serving one or more targets."""

    def __init__(
        self,
        nc: Client,
        events: EventLog,
        registry: KeyValue,
        runner: Runner,
        config: AgentConfig,
    ) -> None:
        self._nc = nc
        self._events = events
        self._registry = registry
        self._runner = runner
        self.config = config
        self._installed = InstallCache(config.install_cache_size, config.agent_id)
        self._tickets = TicketSource(nc, config.targets)
        self._test_s: float | None = None
        """How long a test takes here, start to verdict (a moving average)."""
        self._install_s: float | None = None
        """How long an install takes here (a moving average)."""
        self._last_claimed: tuple[ev.JobId, ...] = ()
        """The jobs of this agent's last claim that assigned any: run or given back."""
        self._set_aside: ev.WorkTicket | None = None
        """The batch waiting for this agent to finish urgent work and come back to it."""

    async def run(self, stop: asyncio.Event) -> None:
        """Work tickets until `stop` is set; a batch in progress gives back its unstarted
        jobs and its ticket when stopping."""
        cfg = self.config
        await self._events.append(
            ev.AgentRegistered(
                at=ev.utcnow(),
                agent_id=cfg.agent_id,
                targets=cfg.targets,
                runner=self._runner.name,
                hostname=socket.gethostname(),
            )
        )
        structlog.contextvars.bind_contextvars(agent_id=cfg.agent_id)
        log.info("agent_registered", targets=[t.value for t in cfg.targets])
        await self._beat()
        heartbeat = asyncio.create_task(self._heartbeat())
        await self._tickets.open()
        try:
            msg = await self._tickets.next(stop, self._installed.rank)
            while msg is not None:
                urgent = await self._work(msg, stop)
                msg = urgent or await self._tickets.next(stop, self._installed.rank)
        finally:
            heartbeat.cancel()
            await self._tickets.close()
            await self._say_goodbye()

    async def _say_goodbye(self) -> None:
        """Record the stop and drop the registry key, best effort: when NATS or the
        orchestrator's append gate is gone already, the key expires instead and the sweep
        declares the agent lost, which requeues the same jobs."""
        agent_id = self.config.agent_id
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await self._events.append(ev.AgentStopped(at=ev.utcnow(), agent_id=agent_id))
                await self._registry.delete(agent_id)
        except (EventLogError, nats.errors.Error, TimeoutError) as exc:
            log.warning("agent_stop_unrecorded", error=repr(exc))
        log.info("agent_stopped")

    async def _beat(self) -> None:
        await self._registry.put(self.config.agent_id, b"alive")

    async def _heartbeat(self) -> None:
        """Keep the registry key alive; an agent that stops beating is declared lost."""
        while True:
            await asyncio.sleep(self.config.heartbeat_ttl_s / 3)
            with contextlib.suppress(Exception):  # NATS away: the next beat tries again
                await self._beat()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.config.ticket_ack_wait_s / 3)
            with contextlib.suppress(Exception):  # NATS away: the next beat tries again
                await msg.in_progress()

    async def _work(self, msg: Msg, stop: asyncio.Event, *, nested: bool = False) -> Msg | None:
        """Work one ticket; returns a more urgent one taken meanwhile. A ticket that is
        not a ticket is terminated; any other failure (NATS or the claim service away,
        say) gives the ticket back for a later try instead of stopping this agent and
        its sibling slots. A `nested` ticket is worked while another batch waits set
        aside: it is not set aside in turn."""
        try:
            ticket = ev.ticket_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("ticket_rejected", data=msg.data[:200])
            await msg.term()
            return None
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            done = await self._work_retrying(ticket, stop, may_set_aside=not nested)
            while done.set_aside and done.urgent is not None:
                done = await self._come_back(ticket, done.urgent, stop)
        finally:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keep_alive
        with contextlib.suppress(Exception):  # NATS away: AckWait redelivers the ticket
            await (msg.ack_sync() if done.spent else msg.nak(delay=1.0))
        return done.urgent

    async def _come_back(self, ticket: ev.WorkTicket, urgent: Msg, stop: asyncio.Event) -> _Done:
        """Work the urgent ticket the batch was set aside for, then the batch again. When
        the urgent work hands over a more urgent ticket still, or the agent stops, the
        batch is given back instead (its jobs went back when it was set aside)."""
        self._set_aside = ticket
        try:
            more_urgent = await self._work(urgent, stop, nested=True)
        finally:
            given_back, self._set_aside = self._set_aside is None, None
        if given_back:
            return _Done(spent=True, urgent=more_urgent)
        if more_urgent is None and not stop.is_set():
            return await self._work_retrying(ticket, stop, may_set_aside=True)
        reason = "agent stopping"
        if more_urgent is not None:
            reason = f"preempted by {bands.queue_name(band_of(more_urgent))}"
        await self._give_back(ticket, [], reason)
        return _Done(spent=True, urgent=more_urgent)

    async def _work_retrying(
        self, ticket: ev.WorkTicket, stop: asyncio.Event, *, may_set_aside: bool
    ) -> _Done:
        """Work the ticket's batch, again after a failure (NATS or the claim service away,
        say) instead of stopping this agent and its sibling slots. A claim whose answer
        was lost may have assigned jobs all the same: claiming again with the same ticket
        gets them back, since a claim hands an agent the jobs it holds. Only a stop lets
        the ticket go unspent."""
        pause = _RETRY_FIRST_S
        while True:
            try:
                return await self._work_batch(ticket, stop, may_set_aside)
            except ClaimUnanswered as exc:
                log.warning("claim_failed", **_batch_keys(ticket), error=str(exc))
            except Exception:
                log.exception("batch_failed", **_batch_keys(ticket))
            if await stopped_within(stop, pause):
                return _Done(spent=False)
            pause = min(pause * 2, _RETRY_CAP_S)

    async def _claim(self, ticket: ev.WorkTicket) -> rpc.ClaimResponse:
        request = rpc.ClaimRequest(
            agent_id=self.config.agent_id,
            batch_id=ticket.batch_id,
            ticket=ticket.ticket,
            as_of_seq=ticket.as_of_seq,
            holding=self._last_claimed,
        )
        try:
            reply = await self._nc.request(
                ev.CLAIM_SUBJECT, msgspec.json.encode(request), timeout=self.config.claim_timeout_s
            )
        except (TimeoutError, nats.errors.Error) as exc:
            raise ClaimUnanswered(f"claim service unavailable: {exc!r}") from exc
        answer = _claim_decoder.decode(reply.data)
        if answer.error is not None:
            raise ClaimUnanswered(answer.error)
        return answer

    async def _work_batch(
        self, ticket: ev.WorkTicket, stop: asyncio.Event, may_set_aside: bool
    ) -> _Done:
        """Claim and run until a claim comes back empty, the agent gives the batch back,
        or a claim goes unanswered (`ClaimUnanswered`). When the batch has more jobs
        queued, the next claim is made while the last job of the current one runs (it
        leaves that job alone: the agent names it among its last claim's), so that the
        device does not wait for the answer. The claim that may find the batch drained
        waits for the last test to end: jobs submitted meanwhile still join here."""
        claim = await self._claim(ticket)
        await self._unless_too_long(claim)
        while claim.jobs:
            jobs = [job.state for job in claim.jobs]
            self._last_claimed = tuple(job.job_id for job in jobs)
            stopped = await self._ensure_installed(ticket, jobs, claim.queued_after)
            if stopped is not None:
                return stopped
            upcoming: asyncio.Future[rpc.ClaimResponse] | None = None
            try:
                for index, job in enumerate(jobs):
                    if stop.is_set():
                        await self._give_back(ticket, jobs[index:], "agent stopping")
                        return _Done(spent=True)
                    worth = self._worth_giving_back(len(jobs) - index + claim.queued_after)
                    urgent = await self._urgent_now(ticket) if worth or may_set_aside else None
                    if urgent is not None:
                        if may_set_aside and self._shorter_than_install(urgent):
                            return await self._preempted(ticket, jobs[index:], urgent, aside=True)
                        if worth:
                            return await self._preempted(ticket, jobs[index:], urgent)
                        await self._tickets.put_back(urgent)
                        may_set_aside = False  # the few jobs left here run first
                    if index == len(jobs) - 1 and claim.queued_after:
                        upcoming = asyncio.ensure_future(self._claim(ticket))
                    await self._run(job)
                claim = await (upcoming or self._claim(ticket))
            finally:
                if upcoming is not None and not upcoming.done():
                    upcoming.cancel()
        return _Done(spent=True)

    async def _unless_too_long(self, urgent: rpc.ClaimResponse) -> None:
        """Give back the batch set aside for the urgent one whose first claim this is,
        when the urgent batch turned out longer than an install (its ticket counted the
        jobs it had when issued): another agent installing its build is then sooner."""
        aside = self._set_aside
        if aside is None or self._test_s is None or self._install_s is None:
            return
        if (len(urgent.jobs) + urgent.queued_after) * self._test_s >= self._install_s:
            await self._give_back(aside, [], "urgent work longer than an install")
            self._set_aside = None

    def _shorter_than_install(self, urgent: Msg) -> bool:
        """Whether the urgent ticket's batch runs here in less time than an install: then
        setting this batch aside for it keeps the jobs left waiting about as long as
        another agent's install would, and saves that install."""
        if self._test_s is None or self._install_s is None:
            return False
        try:
            jobs = ev.ticket_decoder.decode(urgent.data).jobs
        except msgspec.DecodeError:
            return False
        return jobs * self._test_s < self._install_s

    def _worth_giving_back(self, jobs_left: int) -> bool:
        """Whether the rest of the batch is worth giving back for urgent work: not when
        its jobs take less time here than the install another agent would make for them.
        The urgent work then waits those few tests for this agent, or takes another that
        comes free first."""
        if self._test_s is None or self._install_s is None:
            return True
        return jobs_left * self._test_s >= self._install_s

    async def _urgent_now(self, ticket: ev.WorkTicket) -> Msg | None:
        """Between two tests: an urgent ticket, if there is one; one published less than
        `PREEMPT_GRACE_S` ago is waited for, not left until after the next test."""
        wait_s = self._tickets.settling_s(self._interrupting_above(ticket))
        if wait_s:
            await asyncio.sleep(wait_s)
        return await self._urgent(ticket)

    def _interrupting_above(self, ticket: ev.WorkTicket) -> int:
        """The dispatch queue above which a ticket interrupts this one's batch."""
        return max(ticket.band, self.config.preempt_band - 1)

    async def _urgent(self, ticket: ev.WorkTicket, grace_s: float = PREEMPT_GRACE_S) -> Msg | None:
        """A ticket urgent enough to interrupt this one's batch, if there is one now that
        was published at least `grace_s` ago."""
        above = self._interrupting_above(ticket)
        return await self._tickets.take(self._installed.rank, above=above, grace_s=grace_s)

    async def _preempted(
        self,
        ticket: ev.WorkTicket,
        unstarted: list[lifecycle.JobState],
        urgent: Msg,
        how: str = "",
        *,
        aside: bool = False,
    ) -> _Done:
        """Give the batch back for the urgent ticket, or set it `aside` to come back to
        it once the urgent batch is done."""
        try:
            verb = "set aside for" if aside else "preempted by"
            reason = f"{verb} {bands.queue_name(band_of(urgent))}{how}"
            await self._give_back(ticket, unstarted, reason, returns=aside)
        except BaseException:
            await urgent.nak()
            raise
        return _Done(spent=not aside, urgent=urgent, set_aside=aside)

    async def _give_back(
        self,
        ticket: ev.WorkTicket,
        unstarted: list[lifecycle.JobState],
        reason: str,
        *,
        returns: bool = False,
    ) -> None:
        """Release the jobs not started and spend the ticket: the batch gets a fresh one.
        An agent that `returns` keeps the ticket to claim with it again."""
        await self._release(unstarted, reason)
        await self._events.append(
            ev.BatchYielded(
                at=ev.utcnow(),
                batch_id=ticket.batch_id,
                ticket=ticket.ticket,
                agent_id=self.config.agent_id,
                reason=reason,
                returns=returns,
            )
        )
        log.info("batch_yielded", **_batch_keys(ticket), jobs=len(unstarted), reason=reason)

    async def _ensure_installed(
        self, ticket: ev.WorkTicket, jobs: list[lifecycle.JobState], queued_after: int
    ) -> _Done | None:
        """Install the ticket's build unless the device has it; None once it has. An
        urgent ticket interrupts the install, unless the jobs are the batch's last few
        (`_worth_giving_back`): the jobs go back unstarted, and the batch pays for one
        install still, not for one here and another where it goes."""
        if self._installed.use(ticket):
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()
        install = asyncio.ensure_future(self._install(ticket))
        if self._worth_giving_back(len(jobs) + queued_after):
            urgent = await self._during(install, ticket)
            if urgent is not None:
                return await self._preempted(ticket, jobs, urgent, " during the install")
        failure = await install
        if failure is not None:
            log.warning("install_failed", **_batch_keys(ticket), error=failure)
            for job in jobs:
                await self._error(job, failure)
            # The batch's other jobs are for another try, on this device or another.
            await self._give_back(ticket, [], "install failed")
            return _Done(spent=True)
        self._installed.add(ticket)
        took = loop.time() - started
        self._install_s = _moving_average(self._install_s, took)
        await self._events.append(
            ev.BuildInstalled(
                at=ev.utcnow(),
                batch_id=ticket.batch_id,
                agent_id=self.config.agent_id,
                app_version_id=ticket.app_version_id,
                target=ticket.target,
                duration_s=took,
            )
        )
        log.info("build_installed", **_batch_keys(ticket), app_version_id=ticket.app_version_id)
        return None

    async def _during(self, work: asyncio.Future[str | None], ticket: ev.WorkTicket) -> Msg | None:
        """Wait for `work`; an urgent ticket taken meanwhile cancels it and is returned.
        Looks every `PREEMPT_GRACE_S`, which costs nothing while no higher band is hinted.
        An urgent ticket is left for a test's length to agents between two tests: one of
        them gives back only jobs not started, while an install cut short is lost work."""
        while not work.done():
            urgent = await self._urgent(ticket, grace_s=max(PREEMPT_GRACE_S, self._test_s or 0.0))
            if urgent is not None:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return urgent
            await asyncio.wait({work}, timeout=PREEMPT_GRACE_S)
        return None

    async def _install(self, ticket: ev.WorkTicket) -> str | None:
        """Install the ticket's build; the reason it failed, or None once installed."""
        try:
            async with asyncio.timeout(self.config.install_timeout_s):
                await self._runner.install(
                    ticket.org_id, ticket.app_version_id, ticket.target.value
                )
        except TimeoutError:
            return f"install timed out after {self.config.install_timeout_s:g} s"
        except RunnerError as exc:
            return f"install failed: {exc}"
        return None

    async def _append(
        self, state: lifecycle.JobState, event: ev.JobEvent
    ) -> lifecycle.JobState | None:
        """Append a job event guarded by the job's version; None when someone else wrote
        first (the job was cancelled or taken over), and the agent stands down."""
        try:
            appended = await self._events.append(event, expected_seq=state.version)
        except ConcurrencyConflict:
            log.warning("job_taken_over", **qlogging.job_keys(state))
            return None
        return lifecycle.evolve(state, event, appended.seq)

    async def _release(self, jobs: list[lifecycle.JobState], reason: str) -> None:
        """Give back jobs not started, their appends in flight together."""
        now, agent_id = ev.utcnow(), self.config.agent_id
        await asyncio.gather(
            *(
                self._append(
                    job, ev.JobReleased(at=now, job_id=job.job_id, agent_id=agent_id, reason=reason)
                )
                for job in jobs
            )
        )

    async def _error(
        self, job: lifecycle.JobState, reason: str, log_ref: str | None = None
    ) -> None:
        if not await requeue.error_job(
            self._events,
            job,
            self.config.agent_id,
            reason,
            self.config.max_attempts,
            log_ref,
            self.config.backoff,
        ):
            log.warning("job_taken_over", **qlogging.job_keys(job))

    async def _run(self, job: lifecycle.JobState) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._run_test(job)
        self._test_s = _moving_average(self._test_s, loop.time() - started)

    async def _run_test(self, job: lifecycle.JobState) -> None:
        agent_id = self.config.agent_id
        running = await self._append(
            job,
            ev.JobStarted(
                at=ev.utcnow(), job_id=job.job_id, agent_id=agent_id, attempt=job.attempt
            ),
        )
        if running is None:
            return
        output = AttemptOutput(self._nc, running, self.config.log_limit_bytes)
        try:
            async with cancels.watch(self._nc, self._events, running) as cancelled:
                test = asyncio.ensure_future(
                    asyncio.wait_for(
                        self._runner.run_test(running, output), timeout=running.timeout_s
                    )
                )
                outcome = await cancels.unless_cancelled(test, cancelled)
        except TimeoutError:
            reason = f"test timed out after {running.timeout_s:g} s"
            await self._error(running, reason, await output.finish())
            return
        except RunnerError as exc:
            await self._error(running, f"runner failed: {exc}", await output.finish())
            return
        log_ref = await output.finish()
        if outcome is None:
            log.info("test_stopped", **qlogging.job_keys(running), reason="job cancelled")
            return
        now = ev.utcnow()
        verdict: ev.JobEvent = (
            ev.JobPassed(
                at=now,
                job_id=job.job_id,
                agent_id=agent_id,
                attempt=job.attempt,
                duration_s=outcome.duration_s,
                log_ref=log_ref,
            )
            if outcome.passed
            else lifecycle.on_test_failure(
                running, agent_id, outcome.reason, outcome.duration_s, now, log_ref
            )
        )
        finished = await self._append(running, verdict)
        if finished is not None:
            log.info(
                "job_finished",
                **qlogging.job_keys(running),
                verdict=ev.tag_of(verdict),
                stream_seq=finished.version,
            )


def _moving_average(mean: float | None, seconds: float) -> float:
    return seconds if mean is None else mean + _WEIGHT * (seconds - mean)
