"""The scheduling benchmark's workload: a reproducible (seeded) stream of submissions,
the fleet that serves it, and the lower bounds its figures are measured against.

A device fleet's load as CI makes it: builds arrive over time, most on their own and
some in a burst, each submitting its tests for one to three targets in one request; a
few tests of a build come later (stragglers); three orgs of unequal size; a build's
tests share its priority (1-4); a few small hotfix builds are urgent (priority 5).
Durations are scaled down so that a run takes seconds; an install costs 20 tests.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

ORGS = ("acme", "initech", "globex")
ORG_WEIGHTS = (5, 3, 2)
"""acme submits half the builds: the org that floods the queue."""
TARGETS = ("emulator", "device", "browserstack")
TARGET_WEIGHTS = (9, 6, 5)
PRIORITIES = (1, 2, 3, 4)
PRIORITY_WEIGHTS = (15, 20, 40, 25)
HOTFIX_TESTS = (2, 5)
"""A hotfix build runs a few tests per target."""
AGENTS = 20
SHARED = (TARGETS[::2], 2)
"""Agents serving two targets; the others serve one, in proportion to each target's work."""


@dataclass(frozen=True)
class Shape:
    """How big a workload is and how it is timed."""

    jobs: int = 2000
    builds: int = 60
    hotfixes: int = 4
    """Urgent builds (priority 5) among `builds`, arriving while the fleet is busy."""
    span_s: float = 5.0
    """Builds arrive over this long."""
    burst: int = 15
    """Builds that arrive together at `burst_at_s`."""
    burst_at_s: float = 2.0
    straggler_share: float = 0.04
    """Of a build's tests, submitted 0.3 to 1.5 s after the rest."""
    test_s: float = 0.04
    install_s: float = 0.8
    aging_interval_s: float = 2.0
    agents: int = AGENTS
    seed: int = 7

    def quick(self) -> Shape:
        """A tenth of the work on a quarter of the fleet: a smoke run."""
        return Shape(jobs=200, builds=12, hotfixes=1, span_s=2.0, burst=4, agents=6)


@dataclass(frozen=True)
class Submission:
    """One `POST /jobs` of the workload, `at_s` seconds after the start."""

    at_s: float
    jobs: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Workload:
    shape: Shape
    submissions: tuple[Submission, ...]
    fleet: tuple[tuple[tuple[str, ...], int], ...]
    priority: dict[str, int] = field(default_factory=dict)
    """Test path (unique per job) -> the priority the job was submitted with."""

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return [job for s in self.submissions for job in s.jobs]

    @property
    def agents(self) -> int:
        return sum(count for _, count in self.fleet)

    def batches(self) -> dict[tuple[str, str, str], list[float]]:
        """(org, build, target) -> the arrival offsets of its jobs."""
        arrivals: defaultdict[tuple[str, str, str], list[float]] = defaultdict(list)
        for s in self.submissions:
            for job in s.jobs:
                arrivals[job["org_id"], job["app_version_id"], job["target"]].append(s.at_s)
        return dict(arrivals)

    def install_bound(self) -> int:
        """Each batch's build installed once on its target."""
        return len(self.batches())

    def makespan_bound(self, test_s: float | None = None) -> float:
        """No schedule finishes sooner than: the longest batch on one agent; for any
        arrival time, that time plus the work that arrives from then on over the agents
        that can do it (all of them, or those serving one target: a device agent cannot
        help with the emulators' last hour). `test_s` is what one test costs (default:
        the simulated duration alone)."""
        t, i = test_s or self.shape.test_s, self.shape.install_s
        batches = self.batches()

        def released(target: str | None, since: float) -> float:
            """Work of the jobs (of `target`, or all) that arrive at `since` or later,
            and of their installs."""
            return sum(
                sum(a >= since for a in arrivals) * t + (i if min(arrivals) >= since else 0)
                for (_, _, of), arrivals in batches.items()
                if target in (None, of)
            )

        def serving(target: str | None) -> int:
            return sum(n for targets, n in self.fleet if target is None or target in targets)

        arrivals = sorted({s.at_s for s in self.submissions})
        groups = [None, *sorted({target for _, _, target in batches})]
        return max(
            max(i + len(jobs) * t for jobs in batches.values()),
            *(since + released(g, since) / serving(g) for g in groups for since in arrivals),
        )

    def naive(self) -> Workload:
        """The same jobs for a FIFO that installs once per job: each job its own build,
        every priority the same."""

        def alone(job: dict[str, Any]) -> dict[str, Any]:
            number = job["test_path"].rpartition("/t")[2].removesuffix(".spec.js")
            return {**job, "app_version_id": f"{job['app_version_id']}.{number}", "priority": 3}

        submissions = tuple(Submission(s.at_s, tuple(map(alone, s.jobs))) for s in self.submissions)
        return Workload(self.shape, submissions, self.fleet, self.priority)


def _sizes(rng: random.Random, batches: int, jobs: int) -> list[int]:
    """`batches` sizes summing to `jobs`, skewed: a few large batches, many small."""
    weights = [rng.lognormvariate(0, 0.9) for _ in range(batches)]
    sizes = [max(1, int(jobs * w / sum(weights))) for w in weights]
    for n in range(jobs - sum(sizes)):
        sizes[n % batches] += 1
    return sizes


@dataclass(frozen=True)
class _Build:
    org: str
    name: str
    targets: tuple[str, ...]
    priority: int
    at_s: float


def _builds(rng: random.Random, shape: Shape) -> list[_Build]:
    builds = []
    for b in range(shape.builds):
        hotfix = b >= shape.builds - shape.hotfixes
        if hotfix:
            at_s = rng.uniform(shape.span_s / 3, shape.span_s)
        else:
            at_s = shape.burst_at_s if b < shape.burst else rng.uniform(0, shape.span_s)
        picked = rng.sample(TARGETS, counts=TARGET_WEIGHTS, k=rng.choice((1, 1, 2, 3)))
        builds.append(
            _Build(
                org=rng.choices(ORGS, ORG_WEIGHTS)[0],
                name=f"{'hotfix' if hotfix else 'build'}{b}",
                targets=tuple(sorted(set(picked))),
                priority=5 if hotfix else rng.choices(PRIORITIES, PRIORITY_WEIGHTS)[0],
                at_s=at_s,
            )
        )
    return builds


def generate(shape: Shape) -> Workload:
    """The workload of `shape`, the same every time for the same seed."""
    rng = random.Random(shape.seed)
    batches = [(b, target) for b in _builds(rng, shape) for target in b.targets]
    urgent = [key for key in batches if key[0].priority == 5]
    routine = [key for key in batches if key[0].priority != 5]
    sizes = {key: rng.randint(*HOTFIX_TESTS) for key in urgent}
    sizes.update(
        zip(routine, _sizes(rng, len(routine), shape.jobs - sum(sizes.values())), strict=True)
    )
    submissions: list[Submission] = []
    priority: dict[str, int] = {}
    for b, target in batches:
        paths = [f"tests/{b.name}/{target}/t{n}.spec.js" for n in range(sizes[b, target])]
        priority.update((path, b.priority) for path in paths)
        jobs: list[dict[str, Any]] = [
            {
                "org_id": b.org,
                "app_version_id": b.name,
                "test_path": path,
                "target": target,
                "priority": b.priority,
            }
            for path in paths
        ]
        late = [job for job in jobs[1:] if rng.random() < shape.straggler_share]
        on_time = [job for job in jobs if job not in late]
        submissions.append(Submission(b.at_s, tuple(on_time)))
        submissions += [Submission(b.at_s + rng.uniform(0.3, 1.5), (job,)) for job in late]
    ordered = tuple(sorted(submissions, key=lambda s: s.at_s))
    return Workload(shape, ordered, _fleet(shape, sizes), priority)


def _fleet(
    shape: Shape, sizes: dict[tuple[_Build, str], int]
) -> tuple[tuple[tuple[str, ...], int], ...]:
    """A fleet sized to the load: after the shared agents (counted as half an agent for
    each of their targets), one agent at a time goes to the target with the most work
    per agent."""
    work = dict.fromkeys(TARGETS, 0.0)
    for (_, target), size in sizes.items():
        work[target] += shape.install_s + size * shape.test_s
    shared_targets, shared = SHARED
    capacity = {t: shared / len(shared_targets) if t in shared_targets else 0.0 for t in TARGETS}
    counts = dict.fromkeys(TARGETS, 0)
    for _ in range(shape.agents - shared):
        busiest = max(TARGETS, key=lambda t: work[t] / (counts[t] + capacity[t] or 0.1))
        counts[busiest] += 1
    return (*(((t,), n) for t, n in counts.items() if n), (shared_targets, shared))
