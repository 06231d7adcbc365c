"""Where the fleet's time went in one run of the scheduling benchmark: of every agent's
time from the first submission to the last verdict, the share spent running tests,
installing builds (and how much of that beyond one install per batch), and idle before
its first work (nothing had arrived for it yet), between two pieces of work (claims,
events, installs cut short by a preemption) and after its last (the tail: the work left
did not keep it busy). A makespan above its lower bound is idle time somewhere here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra import events as ev

if TYPE_CHECKING:
    import datetime as dt

    from tests.bench.schedule_run import Outcome


@dataclass(frozen=True)
class AgentTime:
    """Shares (0-1) of agents x makespan."""

    tests: float
    installs: float
    extra_installs: float
    """Part of `installs`: those beyond one per batch."""
    before: float
    between: float
    after: float


def agent_time(outcome: Outcome, agents: int, makespan_s: float, batches: int) -> AgentTime:
    """How `agents` agents spent the run's `makespan_s` seconds."""
    work: defaultdict[str, list[tuple[float, float]]] = defaultdict(list)
    for job in outcome.jobs:
        if job.agent_id and job.started_at and job.finished_at:
            work[job.agent_id].append(_span(outcome.started, job.started_at, job.finished_at))
    tests = sum(end - start for spans in work.values() for start, end in spans)
    installed = [e for e in outcome.decisions if isinstance(e, ev.BuildInstalled)]
    for install in installed:
        _, end = _span(outcome.started, install.at, install.at)
        work[install.agent_id].append((end - install.duration_s, end))
    installs = sum(e.duration_s for e in installed)
    mean_install = installs / len(installed) if installed else 0.0
    # An agent that never worked was idle before its first work all along.
    before = (agents - len(work)) * makespan_s
    before += sum(min(start for start, _ in spans) for spans in work.values())
    after = sum(makespan_s - max(end for _, end in spans) for spans in work.values())
    total = agents * makespan_s
    return AgentTime(
        tests=tests / total,
        installs=installs / total,
        extra_installs=max(0, len(installed) - batches) * mean_install / total,
        before=before / total,
        between=(total - tests - installs - before - after) / total,
        after=after / total,
    )


def _span(origin: dt.datetime, start: dt.datetime, end: dt.datetime) -> tuple[float, float]:
    return (start - origin).total_seconds(), (end - origin).total_seconds()
