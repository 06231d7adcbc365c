"""When a batch should be shared by more agents: decided by expected finish time, from
install and test durations observed per target.

An idle agent (no batch of its targets waits for one) joins the batch that would finish
soonest sooner with it. With `w` agents on a batch and `W` seconds of its tests left
(jobs left to claim and jobs its agents hold), the batch needs about `W / w` seconds
more. One more agent first installs the build (`i` seconds) while the others go on, so
the batch then needs about `(W + i) / (w + 1)`; but the newcomer can only take jobs
still to claim (`R` seconds of them), so never less than `(W - R) / w`. Joining is
worth it when the batch then finishes sooner by more than half the install it costs
(`PAYBACK`) and half a claim of tests (`CLAIM_SLACK`: the jobs are shared out a claim
at a time): the install is certain, the gain an estimate. With installs 20 times a
test, a second agent joins from 48 jobs left, a third from 124. Each idle agent in
turn takes the batch it shortens most, so the fleet's last minutes are shared out
instead of being one long batch on one device.

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
PAYBACK = 0.5
"""Of the install a split costs: how much sooner the batch must finish for it, beyond
`CLAIM_SLACK`."""
CLAIM_SLACK = 4
"""Tests: the agents of a shared batch claim its jobs a few at a time, so one of them
may finish up to a claim later than the others; half a claim on average."""


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
    held: int
    """Jobs its agents hold: claimed, not finished."""
    agents: int
    """Agents on it, or whose tickets for it wait."""


@dataclass(frozen=True)
class Split:
    """How many more agents, and why."""

    parts: int
    reason: str


def finish_s(batch: Worked, agents: int, joining: int, install_s: float, test_s: float) -> float:
    """About how long the batch takes to finish on `agents` agents and `joining` more,
    which install the build first and can only take jobs still to claim."""
    left = (batch.ready + batch.held) * test_s
    if not joining:
        return left / agents
    shared = (left + joining * install_s) / (agents + joining)
    return max(shared, (left - batch.ready * test_s) / agents)


def gain_s(batch: Worked, agents: int, install_s: float, test_s: float) -> float:
    """How much sooner the batch finishes with one more agent than on `agents`, beyond
    the margin (not positive: not worth it)."""
    alone = finish_s(batch, agents, 0, install_s, test_s)
    shared = finish_s(batch, agents, 1, install_s, test_s)
    return alone - shared - PAYBACK * install_s - CLAIM_SLACK * test_s


def share(batches: list[Worked], idle: int, install_s: float, test_s: float) -> dict[str, Split]:
    """Batch id -> the idle agents that join it: each in turn joins the batch it makes
    finish soonest sooner, while one finishes sooner beyond the margin at all."""
    agents = {b.batch_id: max(b.agents, 1) for b in batches}
    for _ in range(idle):
        gains = {b.batch_id: gain_s(b, agents[b.batch_id], install_s, test_s) for b in batches}
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
    before = finish_s(batch, on_it, 0, install_s, test_s)
    after = finish_s(batch, on_it, parts, install_s, test_s)
    return (
        f"{batch.ready + batch.held} jobs left: about {after:.2f} s on {on_it + parts} "
        f"agents instead of {before:.2f} s on {on_it}, for {parts} more install(s) of "
        f"{install_s:.2f} s (idle agents)"
    )
