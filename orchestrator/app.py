"""Composition root of the orchestrator: builds the real adapters and runs the API and
the claim service until asked to stop."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from infra import append_gate, connections, embedded
from infra import nats as qnats
from infra.eventlog import EventLog
from orchestrator import auth, http
from orchestrator.claims import ClaimService, claim_server
from orchestrator.ratelimit import RateLimiter
from orchestrator.service import JobService
from orchestrator.sweeper import LostAgentSweeper

if TYPE_CHECKING:
    import asyncio

    from infra.settings import Settings

log = structlog.get_logger(__name__)


async def run(settings: Settings, servers: embedded.Servers, stop: asyncio.Event) -> None:
    """Serve the HTTP API and claims until `stop` is set; shut down in reverse order."""
    async with contextlib.AsyncExitStack() as stack:
        conns = await connections.open_all(stack, servers, "qgjob-orchestrator")
        nc, pool = conns.nc, conns.pool
        events = EventLog(conns.nc)
        service = JobService(events, pool)
        claims = claim_server(
            nc, ClaimService(events, pool, settings.max_attempts, settings.backoff)
        )
        await claims.start()
        stack.push_async_callback(claims.stop)
        # Agents store events, heartbeats and logs only through the gate, which checks
        # them, and bind to the registry, which they may not create: both are ready
        # before the API answers, so that agents started once it does find them.
        gate = append_gate.AppendGate(nc)
        await gate.start()
        stack.push_async_callback(gate.stop)
        registry = await qnats.registry(conns.js, settings.agent_ttl_s)
        tokens = auth.TokenRegistry(conns.js)
        await tokens.start()
        stack.push_async_callback(tokens.stop)
        limiter = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
        app = http.create_app(service, pool, nc, tokens, limiter, settings.scheduling)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.api_host, settings.api_port)
        await site.start()
        log.info("orchestrator_started", url=f"http://{settings.api_host}:{settings.api_port}")
        sweeper = LostAgentSweeper(
            events,
            pool,
            registry,
            settings.max_attempts,
            interval_s=settings.agent_ttl_s / 2,
            backoff=settings.backoff,
        )
        await sweeper.run(stop)
        log.info("orchestrator_stopping")
