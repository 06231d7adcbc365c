"""When a batch should be shared by more agents: decided by expected finish time, from
install and test durations observed per target.

An idle agent (no batch of its targets waits for one) joins the batch that would finish
soonest sooner with it: with `w` agents on a batch and `n` jobs of `t` seconds left to
claim, the batch needs about `n * t / w` seconds more; with one more agent, which first
installs the build (`i` seconds), `i + n * t / (w + 1)`. Joining is worth it when the
second is shorter by more than the estimate's margin (`MARGIN` of the first): a split
costs an install for sure, its gain is an estimate. With installs 20 times a test, a
second agent joins from 51 jobs left, a third from 172. Each idle agent in turn takes
the batch it shortens most, so the fleet's last minutes are shared out instead of
being one long batch on one device.

Agents are only ever asked to share when they are idle now. A ticket issued ahead of
time, for agents to take as they come free, is taken later than decided: often when
the batch is nearly done (an install for a handful of jobs), or instead of a batch
nobody works yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from infra import events as ev

_WEIGHT = 0.2
"""Of each new observation in the moving average."""
MARGIN = 0.1
"""Of a batch's expected remaining time: how much sooner another agent must make it
finish to join. Test durations vary by about this much between runs of one workload."""


@dataclass
class Durations:
    """Moving averages per target of what an install and a test cost an agent.

    An install costs its own duration. A test costs the time from the end of its agent's
    last piece of work on the batch (the install, or the test before) to its verdict,
    over the tests it started meanwhile: besides the runner's duration, that holds what
    the runner does not time (recording the start, keeping the output, claiming the
    next jobs): 54-59 ms a test in the benchmark against the runner's 40 ms, so a split
    judged on the runner's duration alone would be judged a quarter short."""

    install_s: dict[ev.Target, float] = field(default_factory=dict)
    test_s: dict[ev.Target, float] = field(default_factory=dict)
    _since: dict[ev.AgentId, _Mark] = field(default_factory=dict)
    """Agent -> where and when its last piece of work ended, and the tests it started
    since."""

    def installed(self, event: ev.BuildInstalled) -> None:
        _observe(self.install_s, event.target, event.duration_s)
        self._since[event.agent_id] = _Mark(event.batch_id, event.at)

    def started(self, agent_id: ev.AgentId) -> None:
        mark = self._since.get(agent_id)
        if mark is not None:
            mark.started += 1

    def tested(self, agent_id: ev.AgentId, batch_id: str, target: ev.Target, at: datetime) -> None:
        """A verdict of the agent on the batch, at `at`."""
        mark = self._since.get(agent_id)
        if mark is not None and mark.batch_id == batch_id and mark.started:
            _observe(self.test_s, target, (at - mark.at).total_seconds() / mark.started)
        self._since[agent_id] = _Mark(batch_id, at)


@dataclass
class _Mark:
    batch_id: str
    at: datetime
    started: int = 0


def _observe(means: dict[ev.Target, float], target: ev.Target, seconds: float) -> None:
    mean = means.get(target)
    means[target] = seconds if mean is None else mean + _WEIGHT * (seconds - mean)


@dataclass(frozen=True)
class Worked:
    """A batch more agents may share."""

    batch_id: str
    ready: int
    """Jobs left to claim."""
    agents: int
    """Agents on it, or whose tickets for it wait."""


@dataclass(frozen=True)
class Split:
    """How many more agents, and why."""

    parts: int
    reason: str


def gain_s(jobs: int, agents: int, install_s: float, test_s: float) -> float:
    """How much sooner `jobs` jobs that `agents` agents work finish with one more agent,
    which installs the build first, beyond the margin (not positive: not worth it)."""
    remaining = jobs * test_s / agents
    return remaining - (install_s + jobs * test_s / (agents + 1)) - MARGIN * remaining


def share(batches: list[Worked], idle: int, install_s: float, test_s: float) -> dict[str, Split]:
    """Batch id -> the idle agents that join it: each in turn joins the batch it makes
    finish soonest sooner, while one finishes sooner beyond the margin at all."""
    agents = {b.batch_id: max(b.agents, 1) for b in batches}
    for _ in range(idle):
        gains = {
            b.batch_id: gain_s(b.ready, agents[b.batch_id], install_s, test_s) for b in batches
        }
        best = max(gains, key=lambda batch_id: (gains[batch_id], batch_id), default=None)
        if best is None or gains[best] <= 0:
            break
        agents[best] += 1
    shared: dict[str, Split] = {}
    for batch in batches:
        parts = agents[batch.batch_id] - max(batch.agents, 1)
        if parts:
            shared[batch.batch_id] = Split(parts, _joined(batch, parts, install_s, test_s))
    return shared


def _joined(batch: Worked, parts: int, install_s: float, test_s: float) -> str:
    on_it = max(batch.agents, 1)
    before = batch.ready * test_s / on_it
    after = install_s + batch.ready * test_s / (on_it + parts)
    return (
        f"{batch.ready} jobs left: about {after:.2f} s on {on_it + parts} agents instead "
        f"of {before:.2f} s on {on_it}, for {parts} more install(s) of {install_s:.2f} s "
        "(idle agents)"
    )
