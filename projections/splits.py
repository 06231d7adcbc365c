"""When a batch should be shared by more agents: decided by expected finish time, from
install and test durations observed per target.

An idle agent (no batch of its targets waits for one) joins the batch that would finish
soonest sooner with it: with `w` agents on a batch and `n` jobs of `t` seconds left to
claim, the batch needs about `n * t / w` seconds more; with one more agent, which first
installs the build (`i` seconds), `i + n * t / (w + 1)`. Joining is worth it when the
second is shorter, `n * t > i * w * (w + 1)`: with installs 20 times a test, a second
agent joins from 41 jobs left, a third from 121. Each idle agent in turn takes the
batch it shortens most, so the fleet's last minutes are shared out instead of being one
long batch on one device.

Agents are only ever asked to share when they are idle now. A ticket issued ahead of
time, for agents to take as they come free, is taken later than decided: often when
the batch is nearly done (an install for a handful of jobs), or instead of a batch
nobody works yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra import events as ev

_WEIGHT = 0.2
"""Of each new observation in the moving average."""


@dataclass
class Durations:
    """Moving averages of install and test durations per target."""

    install_s: dict[ev.Target, float] = field(default_factory=dict)
    test_s: dict[ev.Target, float] = field(default_factory=dict)

    def installed(self, target: ev.Target, seconds: float) -> None:
        _observe(self.install_s, target, seconds)

    def tested(self, target: ev.Target, seconds: float) -> None:
        _observe(self.test_s, target, seconds)


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


def sooner_s(jobs: int, agents: int, install_s: float, test_s: float) -> float:
    """How much sooner `jobs` jobs that `agents` agents work finish with one more agent,
    which installs the build first (negative: later)."""
    return jobs * test_s / agents - (install_s + jobs * test_s / (agents + 1))


def share(batches: list[Worked], idle: int, install_s: float, test_s: float) -> dict[str, Split]:
    """Batch id -> the idle agents that join it: each in turn joins the batch it makes
    finish soonest sooner, while one finishes sooner at all."""
    agents = {b.batch_id: max(b.agents, 1) for b in batches}
    for _ in range(idle):
        gains = {
            b.batch_id: sooner_s(b.ready, agents[b.batch_id], install_s, test_s) for b in batches
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
