"""Nothing lost, nothing run twice: with a few hundred jobs running on several simulated
agents, one kind of component is killed with SIGKILL and restarted several times, at
moments a seeded generator picks; then every promise is checked on the event stream and
the read models are compared with a fresh replay.

A scenario is reproduced by its seed (`QG_CHAOS_SEED` overrides every scenario's; the
expected failures below are known for the default seeds); the components' logs stay in
the test's temporary directory.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from infra import embedded
from infra import nats as qnats
from tests.chaos import cluster, readmodels, workload
from tests.chaos.history import Audit, History, audit
from tests.chaos.strikes import Striker, Victim

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js import JetStreamContext

    from tests.chaos.servers import RestartableNats, RestartablePostgres
    from tests.stack import Stack

JOBS = 300
BUILDS = 8
WAVES = 30
WAVE_PAUSE_S = 0.5
"""Bulk submissions of ten jobs this far apart: every outage meets some."""
KILLS = 4
KILL_GAP_S = (1.0, 3.0)
"""Time between one recovery and the next kill, drawn uniformly."""
SUBMIT_TIMEOUT_S = 90.0
AGENTS = [cluster.agent_command(name, slots=2, install_s=0.3, test_s=0.15) for name in "abc"]


@dataclass(frozen=True)
class Scenario:
    victim: Victim
    seed: int
    downtime_s: tuple[float, float] = (0.2, 1.5)
    """How long the victim stays down after each kill, drawn uniformly."""
    fresh_agent_ids: bool = False
    """Agents only: a killed agent process comes back under new agent ids (a replacement
    machine) instead of its own (a restart)."""

    @property
    def label(self) -> str:
        return f"{self.victim}-{self.seed}"

    def __str__(self) -> str:
        kind = "agent-replaced" if self.fresh_agent_ids else f"{self.victim}-kill"
        return f"{kind} seed={self.seed}"


def _seed(default: int) -> int:
    return int(os.environ.get("QG_CHAOS_SEED", default))


SCENARIOS = [
    Scenario(Victim.AGENT, _seed(1), downtime_s=(0.1, 1.0)),
    Scenario(Victim.AGENT, _seed(6), fresh_agent_ids=True),
    Scenario(Victim.ORCHESTRATOR, _seed(2)),
    Scenario(Victim.PROJECTOR, _seed(3)),
    Scenario(Victim.NATS, _seed(4)),
    Scenario(Victim.POSTGRES, _seed(5)),
]


@dataclass(frozen=True)
class Outcome:
    audit: Audit
    kills: int
    mid_test: int
    resubmits: int
    crashes: list[cluster.Crash]
    read_models: readmodels.ReadModels


async def _drive(
    scenario: Scenario,
    running: cluster.Cluster,
    stack: Stack,
    js: JetStreamContext,
    striker: Striker,
) -> Outcome:
    """Submit the workload while striking KILLS times, wait for every verdict, check."""
    rng = striker.rng
    specs = workload.make_specs(rng, scenario.label, JOBS, BUILDS)
    submitter = workload.Submitter(stack)
    supervisor = asyncio.create_task(running.supervise(striker.held_down))
    submitting = asyncio.create_task(submitter.waves(specs, WAVES, WAVE_PAUSE_S, SUBMIT_TIMEOUT_S))
    try:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(*KILL_GAP_S))
            await striker.strike()
        await submitting
        expected = workload.expected_job_ids(specs, submitter)
        history = History()
        await history.until_finished(js, expected)
        database_url = running.env["QG_DATABASE_URL"]
        read_models = await readmodels.compare_with_replay(stack, js, database_url)
        await history.catch_up(js)
    finally:
        for task in (submitting, supervisor):
            task.cancel()
        await asyncio.gather(submitting, supervisor, return_exceptions=True)
    return Outcome(
        audit=audit(history, expected),
        kills=striker.kills,
        mid_test=striker.mid_test,
        resubmits=submitter.retried_requests,
        crashes=list(running.crashes),
        read_models=read_models,
    )


async def _run(
    scenario: Scenario,
    nats: RestartableNats,
    postgres: RestartablePostgres,
    database_url: str,
    log_dir: Path,
) -> Outcome:
    """Start every component on the test's servers and drive the scenario."""
    qg_servers = embedded.Servers(nats_url=nats.url, database_url=database_url)
    nc = await qnats.connect(nats.url, name="chaos-test")
    js = nc.jetstream()
    try:
        async with cluster.running(qg_servers, js, log_dir, AGENTS) as (running, stack):
            striker = Striker(
                scenario.victim,
                random.Random(scenario.seed),
                running,
                stack,
                nats,
                postgres,
                downtime_s=scenario.downtime_s,
                fresh_agent_ids=scenario.fresh_agent_ids,
            )
            return await _drive(scenario, running, stack, js, striker)
    finally:
        await qnats.close(nc)


def _summary(scenario: Scenario, outcome: Outcome, seconds: float) -> str:
    found = outcome.audit
    mid_test = f" ({outcome.mid_test} mid-test)" if scenario.victim is Victim.AGENT else ""
    exits = collections.Counter(crash.name for crash in outcome.crashes)
    crashed = ", ".join(f"{name} x{count}" for name, count in sorted(exits.items())) or "none"
    return (
        f"chaos[{scenario}]: {found.jobs} jobs, {outcome.kills} kills survived{mid_test}, "
        f"{len(found.lost)} lost, {len(found.duplicated)} duplicated, "
        f"{found.retries} retries explained ({found.infra_retries} infra, "
        f"{found.test_retries} flaky), {found.dead} dead, {found.installs} installs, "
        f"{outcome.resubmits} submits retried, {len(outcome.crashes)} self-exits "
        f"restarted ({crashed}), {seconds:.1f} s"
    )


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
async def test_nothing_lost_nothing_run_twice(
    scenario: Scenario,
    chaos_nats: RestartableNats,
    chaos_postgres: RestartablePostgres,
    chaos_database: str,
    chaos_summary: list[str],
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    try:
        outcome = await _run(scenario, chaos_nats, chaos_postgres, chaos_database, tmp_path)
    except Exception as exc:
        chaos_summary.append(f"chaos[{scenario}]: did not survive: {exc}")
        raise
    summary = _summary(scenario, outcome, time.monotonic() - started)
    chaos_summary.append(summary)
    outcome.audit.check_promises(summary)
    outcome.read_models.check()
    assert outcome.kills == KILLS
    outcome.audit.check_finished()
