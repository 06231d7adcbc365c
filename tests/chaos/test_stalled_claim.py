"""The worst moment of a nats-server kill, pinned down: the orchestrator records a claim's
`JobAssigned` events, but the agent never hears the answer (the reply went down with the
server, or came after the agent stopped waiting). The agent lives on, heartbeating.

The moment is made certain by freezing the orchestrator (SIGSTOP) from the agent's
first claim request until that request has timed out, then letting it go (SIGCONT): it
then answers the stale request. The jobs must still reach their verdicts: the agent asks
again with the same ticket, and a claim gives an agent back the jobs it already holds.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from typing import TYPE_CHECKING

import pytest

from agent.worker import AgentConfig
from infra import embedded
from infra import events as ev
from infra import nats as qnats
from tests.chaos import cluster, workload
from tests.chaos.history import History, audit

if TYPE_CHECKING:
    from pathlib import Path

    from nats.aio.msg import Msg

    from tests.chaos.servers import RestartableNats

SEED = 11
JOBS = 5
CLAIM_TIMEOUT_S = AgentConfig(agent_id=ev.AgentId("-"), targets=()).claim_timeout_s
"""How long an agent waits for a claim's answer (not configurable: the default)."""
FIRST_CLAIM_TIMEOUT_S = 60.0
SUBMIT_TIMEOUT_S = 30.0


@pytest.mark.slow
async def test_a_claim_answered_after_the_agent_gave_up_strands_no_job(
    chaos_nats: RestartableNats,
    chaos_database: str,
    chaos_summary: list[str],
    tmp_path: Path,
) -> None:
    servers = embedded.Servers(nats_url=chaos_nats.url, database_url=chaos_database)
    claimed = asyncio.Event()

    async def on_claim(_: Msg) -> None:
        claimed.set()

    nc = await qnats.connect(chaos_nats.url, name="chaos-test")
    js = nc.jetstream()
    try:
        # A plain subscriber (not in the orchestrators' queue group) sees every claim.
        await nc.subscribe(ev.CLAIM_SUBJECT, cb=on_claim)
        async with cluster.running(servers, js, tmp_path, agents=[]) as (running, stack):
            specs = workload.make_specs(random.Random(SEED), "stalled", JOBS, builds=1)
            submitter = workload.Submitter(stack)
            await submitter.submit(specs, time.monotonic() + SUBMIT_TIMEOUT_S)
            serve = running.components["serve"].process
            os.kill(serve.pid, signal.SIGSTOP)
            try:
                agent = cluster.agent_command("a", slots=1, install_s=0.3, test_s=0.15)
                await running.spawn(agent)
                async with asyncio.timeout(FIRST_CLAIM_TIMEOUT_S):
                    await claimed.wait()
                await asyncio.sleep(CLAIM_TIMEOUT_S + 1.0)
            finally:
                os.kill(serve.pid, signal.SIGCONT)
            expected = workload.expected_job_ids(specs, submitter)
            history = History()
            await history.until_finished(js, expected)
    finally:
        await qnats.close(nc)
    found = audit(history, expected)
    summary = (
        f"chaos[claim answered after the agent gave up]: {found.jobs} jobs, orchestrator "
        f"frozen {CLAIM_TIMEOUT_S + 1.0:g} s mid-claim, {len(found.lost)} lost, "
        f"{len(found.duplicated)} duplicated, {found.retries} retries explained"
    )
    chaos_summary.append(summary)
    found.check_promises(summary)
    found.check_finished()
