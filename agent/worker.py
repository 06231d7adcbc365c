"""An agent: takes a dispatch ticket, claims the batch's jobs, installs the build once,
runs the tests one after another, and claims again before letting the ticket go."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import OrderedDict
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import structlog

from agent import cancels
from agent.output import AttemptOutput
from agent.runners import RunnerError
from agent.tickets import TicketSource
from infra import events as ev
from infra import lifecycle, logstore, requeue, rpc
from infra.eventlog import ConcurrencyConflict

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.kv import KeyValue

    from agent.runners import Runner
    from infra.eventlog import EventLog

log = structlog.get_logger(__name__)

_claim_decoder = msgspec.json.Decoder(rpc.ClaimResponse)


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
    install_cache_size: int = 8
    """How many installed builds the device keeps."""
    log_limit_bytes: int = logstore.DEFAULT_LIMIT_BYTES
    """How much of one attempt's output is kept."""


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
        self._installed: OrderedDict[tuple[str, str, str], None] = OrderedDict()

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
        tickets = TicketSource(self._nc, cfg.targets)
        await tickets.open()
        try:
            while (msg := await tickets.next(stop)) is not None:
                await self._work(msg, stop)
        finally:
            heartbeat.cancel()
            await tickets.close()
            await self._events.append(ev.AgentStopped(at=ev.utcnow(), agent_id=cfg.agent_id))
            await self._registry.delete(cfg.agent_id)
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
            await msg.in_progress()

    async def _work(self, msg: Msg, stop: asyncio.Event) -> None:
        """Work one ticket. A ticket that is not a ticket is terminated; any other failure
        (NATS or the claim service away, say) gives the ticket back for a later try
        instead of stopping this agent and its sibling slots."""
        try:
            ticket = ev.ticket_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("ticket_rejected", data=msg.data[:200])
            await msg.term()
            return
        keep_alive = asyncio.create_task(self._keep_alive(msg))
        try:
            spent = await self._work_batch(ticket, stop)
        except Exception:
            log.exception("batch_failed", batch_id=ticket.batch_id)
            spent = False
        finally:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keep_alive
        with contextlib.suppress(Exception):  # NATS away: AckWait redelivers the ticket
            await (msg.ack_sync() if spent else msg.nak(delay=1.0))

    async def _claim(self, ticket: ev.WorkTicket) -> rpc.ClaimResponse:
        request = rpc.ClaimRequest(
            agent_id=self.config.agent_id,
            batch_id=ticket.batch_id,
            ticket=ticket.ticket,
            as_of_seq=ticket.as_of_seq,
        )
        try:
            reply = await self._nc.request(
                ev.CLAIM_SUBJECT, msgspec.json.encode(request), timeout=self.config.claim_timeout_s
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            return rpc.ClaimResponse(jobs=[], error=f"claim service unavailable: {exc!r}")
        return _claim_decoder.decode(reply.data)

    async def _work_batch(self, ticket: ev.WorkTicket, stop: asyncio.Event) -> bool:
        """Claim and run until a claim comes back empty (True: the ticket is spent) or the
        agent must let the ticket go unspent (False)."""
        while True:
            claim = await self._claim(ticket)
            if claim.error is not None:
                log.warning("claim_refused", batch_id=ticket.batch_id, error=claim.error)
                return False
            if not claim.jobs:
                return True
            jobs = [job.state for job in claim.jobs]
            if not await self._ensure_installed(ticket, jobs):
                continue
            for index, job in enumerate(jobs):
                if stop.is_set():
                    await self._release(jobs[index:], "agent stopping")
                    return False
                await self._run(job)

    async def _ensure_installed(
        self, ticket: ev.WorkTicket, jobs: list[lifecycle.JobState]
    ) -> bool:
        key = (ticket.org_id, ticket.app_version_id, ticket.target.value)
        if key in self._installed:
            self._installed.move_to_end(key)
            return True
        loop = asyncio.get_running_loop()
        started = loop.time()
        failure = await self._install(ticket)
        if failure is not None:
            log.warning("install_failed", batch_id=ticket.batch_id, error=failure)
            for job in jobs:
                await self._error(job, failure)
            return False
        self._installed[key] = None
        if len(self._installed) > self.config.install_cache_size:
            self._installed.popitem(last=False)
        await self._events.append(
            ev.BuildInstalled(
                at=ev.utcnow(),
                batch_id=ticket.batch_id,
                agent_id=self.config.agent_id,
                app_version_id=ticket.app_version_id,
                target=ticket.target,
                duration_s=loop.time() - started,
            )
        )
        log.info("build_installed", batch_id=ticket.batch_id, app_version_id=ticket.app_version_id)
        return True

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
            log.warning("job_taken_over", job_id=state.job_id)
            return None
        return lifecycle.evolve(state, event, appended.seq)

    async def _release(self, jobs: list[lifecycle.JobState], reason: str) -> None:
        for job in jobs:
            await self._append(
                job,
                ev.JobReleased(
                    at=ev.utcnow(), job_id=job.job_id, agent_id=self.config.agent_id, reason=reason
                ),
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
            log.warning("job_taken_over", job_id=job.job_id)

    async def _run(self, job: lifecycle.JobState) -> None:
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
            log.info("test_stopped", job_id=job.job_id, reason="job cancelled")
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
        if await self._append(running, verdict) is not None:
            log.info(
                "job_finished",
                job_id=job.job_id,
                batch_id=job.batch_id,
                verdict=ev.tag_of(verdict),
            )
