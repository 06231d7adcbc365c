"""Scheduling figures: the same seeded workload run through qgjob's scheduler and through
a naive FIFO that installs once per job, each on the real system (`qgjob serve`,
`qgjob project`, a fleet of simulated agents; fresh nats-server and PostgreSQL per run),
set against lower bounds.

Run as `python -m tests.bench.schedule_bench` (`just bench-schedule`); `--quick` for a
smoke run, `--json` for figures a script can read, `--seed` for another workload.

- installs: against each batch's build installed once per target;
- makespan (first submission to last verdict): against the work over the agents that
  may do it, the longest batch, or any arrival time plus the work that arrives from then
  on; a test's work is what it costs in this system (start to verdict, as measured: the
  simulated run plus its events and log upload), the bound at the simulated duration
  alone is printed beside it;
- queue wait (submission to the assignment that ran the job) p50/p95/max per priority
  band, and time to start; a job given back by a preempted agent counts its whole wait;
- agent utilisation: install and test time over agents times makespan, and where the
  rest went: idle before an agent's first work, between two pieces of work, or at the
  tail (`schedule_profile`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import statistics
import tempfile
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from infra import events as ev
from infra import logging as qlogging
from tests.bench import schedule_run
from tests.bench.measure import BenchError, percentile
from tests.bench.schedule_profile import AgentTime, agent_time
from tests.bench.schedule_run import Outcome, System
from tests.bench.schedule_workload import Shape, Workload, generate

if TYPE_CHECKING:
    import datetime as dt
    from collections.abc import Callable

    from infra import api

BANDS = (5, 4, 3, 2, 1)
TIME_ROWS: tuple[tuple[str, Callable[[AgentTime], float]], ...] = (
    ("running tests", lambda t: t.tests),
    ("installing", lambda t: t.installs),
    ("  of which beyond one install per batch", lambda t: t.extra_installs),
    ("idle before its first work", lambda t: t.before),
    ("idle between two pieces of work", lambda t: t.between),
    ("idle after its last work (tail)", lambda t: t.after),
)
"""Where agents x makespan went (`schedule_profile`)."""


def systems(shape: Shape) -> tuple[System, System]:
    """The scheduler as configured for the run, and the FIFO baseline: no aging, orgs
    not interleaved, devices that keep no build."""
    scheduler = System(
        "scheduler", {"QG_AGING_INTERVAL_S": str(shape.aging_interval_s)}, install_cache=8
    )
    fifo = System(
        "fifo", {"QG_AGING_INTERVAL_S": "0", "QG_OFFERED_PER_ORG": "1000000"}, install_cache=0
    )
    return scheduler, fifo


@dataclass(frozen=True)
class Waits:
    """Seconds one band's jobs waited from submission: to the assignment that ran them
    (queue), to their start, and to the first claim of their batch after it (dispatch:
    what aging bounds; the rest of a queue wait is the batch's own jobs ahead of it)."""

    queue: list[float]
    start: list[float]
    dispatch: list[float]

    def triple(self) -> str:
        top = max(self.queue, default=0.0)
        return f"{_pct(self.queue, 50):.2f} / {_pct(self.queue, 95):.2f} / {top:.2f} s"


@dataclass(frozen=True)
class Urgent:
    """A priority-5 batch's wait for its first assignment, in three parts: until its
    ticket was published (the grouping projector), until an agent was free for it (the
    end of the test after which it gave its batch back, or at once if one was idle), and
    the claim (which waits for the `jobs` read model to show the jobs)."""

    ticket: float
    free: float
    claim: float

    @property
    def dispatch(self) -> float:
        """The system's own latency: ticket and claim."""
        return self.ticket + self.claim


@dataclass(frozen=True)
class Figures:
    """One system's figures."""

    installs: int
    makespan_s: float
    waits: dict[int, Waits]
    urgent: list[Urgent]
    utilisation: float
    dispatch_s: float
    """Submission to assignment of the first job, on the idle fleet."""
    test_cost_s: float
    """A test from its start to its verdict, on average."""
    decisions: dict[str, int]
    time: AgentTime


def figures(workload: Workload, outcome: Outcome) -> Figures:
    shape = workload.shape
    jobs = outcome.jobs
    unfinished = [j.job_id for j in jobs if j.finished_at is None or j.assigned_at is None]
    if unfinished or len(jobs) != len(workload.jobs):
        raise BenchError(f"{len(jobs)} jobs read back, unfinished: {unfinished[:5]}")
    makespan = _seconds(max(j.finished_at for j in jobs if j.finished_at), outcome.started)
    claims: defaultdict[str, list[dt.datetime]] = defaultdict(list)
    for event in outcome.decisions:
        if isinstance(event, ev.BatchClaimed):
            claims[event.batch_id].append(event.at)

    def dispatched(job: api.JobView) -> float:
        after = [at for at in claims[job.batch_id] if at >= job.submitted_at]
        return _seconds(min(after, default=job.assigned_at), job.submitted_at)

    waits: dict[int, Waits] = {}
    for band in BANDS:
        mine = [j for j in jobs if workload.priority[j.test_path] == band]
        waits[band] = Waits(
            queue=[_seconds(j.assigned_at, j.submitted_at) for j in mine],
            start=[_seconds(j.started_at, j.submitted_at) for j in mine],
            dispatch=list(map(dispatched, mine)),
        )
    busy = outcome.installs * shape.install_s + sum(
        _seconds(j.finished_at, j.started_at) for j in jobs
    )
    first = min(jobs, key=lambda j: j.submitted_at)
    tags = Counter(ev.tag_of(e) for e in outcome.decisions)
    return Figures(
        installs=outcome.installs,
        makespan_s=makespan,
        waits=waits,
        urgent=urgent(workload, outcome),
        utilisation=busy / (workload.agents * makespan),
        dispatch_s=min(
            _seconds(j.assigned_at, j.submitted_at)
            for j in jobs
            if j.submitted_at == first.submitted_at
        ),
        test_cost_s=statistics.mean(_seconds(j.finished_at, j.started_at) for j in jobs),
        decisions=dict(tags),
        time=agent_time(outcome, workload.agents, makespan, workload.install_bound()),
    )


def urgent(workload: Workload, outcome: Outcome) -> list[Urgent]:
    """For each priority-5 batch: its ticket, an agent coming free, its claim."""
    found: list[Urgent] = []
    batches = {j.batch_id for j in outcome.jobs if workload.priority[j.test_path] == 5}
    claims = [e for e in outcome.decisions if isinstance(e, ev.BatchClaimed)]
    for batch_id in sorted(batches):
        jobs = [j for j in outcome.jobs if j.batch_id == batch_id]
        submitted = min(j.submitted_at for j in jobs)
        assigned = min(j.assigned_at for j in jobs if j.assigned_at)
        published = min(at for at, t in outcome.tickets if t.batch_id == batch_id)
        claim = next(e for e in claims if e.batch_id == batch_id)
        yields = [
            e.at
            for e in outcome.decisions
            if isinstance(e, ev.BatchYielded)
            and e.agent_id == claim.agent_id
            and published <= e.at <= claim.at
        ]
        free = max(yields, default=published)
        found.append(
            Urgent(
                ticket=_seconds(published, submitted),
                free=_seconds(free, published),
                claim=_seconds(assigned, free),
            )
        )
    return found


def _seconds(later: Any, earlier: Any) -> float:
    return float((later - earlier).total_seconds()) if later is not None else float("nan")


@dataclass(frozen=True)
class Row:
    label: str
    scheduler: str
    fifo: str
    bound: str = ""
    goal: str = ""
    ok: bool | None = None


def rows(workload: Workload, s: Figures, f: Figures) -> list[Row]:
    """The printed table: scheduler beside FIFO, with bounds and goals."""
    shape = workload.shape
    install_bound = workload.install_bound()
    makespan_bound = workload.makespan_bound(s.test_cost_s)
    nominal_bound = workload.makespan_bound()
    top = s.waits[5]
    out = [
        Row(
            "installs",
            f"{s.installs} ({s.installs / install_bound:.2f}x)",
            f"{f.installs} ({f.installs / install_bound:.2f}x)",
            str(install_bound),
            "<= 1.10x bound",
            s.installs <= 1.10 * install_bound,
        ),
        Row(
            "makespan",
            f"{s.makespan_s:.2f} s ({s.makespan_s / makespan_bound:.2f}x)",
            f"{f.makespan_s:.2f} s ({f.makespan_s / makespan_bound:.2f}x)",
            f"{makespan_bound:.2f} s",
            "<= 1.25x bound",
            s.makespan_s <= 1.25 * makespan_bound,
        ),
        Row(
            "  bound at the simulated test time",
            f"{s.makespan_s / nominal_bound:.2f}x",
            f"{f.makespan_s / nominal_bound:.2f}x",
            f"{nominal_bound:.2f} s",
        ),
        Row("test cost, start to verdict", _ms(s.test_cost_s), _ms(f.test_cost_s)),
        Row("agent utilisation", f"{s.utilisation:.0%}", f"{f.utilisation:.0%}"),
        Row("dispatch latency, idle fleet", _ms(s.dispatch_s), _ms(f.dispatch_s)),
        Row(
            f"p5 queue wait p50/p95/max ({len(top.queue)} jobs)", top.triple(), f.waits[5].triple()
        ),
        Row("  ticket published, p95/max", _pair([u.ticket for u in s.urgent]), ""),
        Row(
            "  then an agent free, p95/max",
            _pair([u.free for u in s.urgent]),
            "",
            "",
            f"p95 <= one test ({_ms(s.test_cost_s)})",
            _pct([u.free for u in s.urgent], 95) <= s.test_cost_s,
        ),
        Row("  then its claim, p95/max", _pair([u.claim for u in s.urgent]), ""),
        Row(
            "p5 time to start p95 (with install)",
            f"{_pct(top.start, 95):.2f} s",
            f"{_pct(f.waits[5].start, 95):.2f} s",
        ),
    ]
    for band in BANDS[1:]:
        sw, fw = s.waits[band], f.waits[band]
        lifted = (5 - band) * shape.aging_interval_s
        bound = lifted + shape.aging_interval_s
        late = max(sw.dispatch, default=0.0)
        out += [
            Row(f"p{band} queue wait p50/p95/max ({len(sw.queue)} jobs)", sw.triple(), fw.triple()),
            Row(
                f"  until its batch was taken, max (band 5 after {lifted:g} s)",
                f"{late:.2f} s",
                f"{max(fw.dispatch, default=0.0):.2f} s",
                "",
                f"<= {bound:g} s (one interval at band 5)",
                late <= bound,
            ),
        ]
    out += [
        Row(f"agent time: {label}", f"{share(s.time):.0%}", f"{share(f.time):.0%}")
        for label, share in TIME_ROWS
    ]
    longest = max(max(w.queue, default=0.0) for w in s.waits.values())
    fifo_longest = max(max(w.queue, default=0.0) for w in f.waits.values())
    out.append(Row("longest wait of any job", f"{longest:.2f} s", f"{fifo_longest:.2f} s"))
    for tag in ("batch.claimed", "batch.yielded", "batch.split", "batch.due", "batch.drained"):
        out.append(Row(f"events {tag}", str(s.decisions.get(tag, 0)), str(f.decisions.get(tag, 0))))
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _pair(samples: list[float]) -> str:
    return f"{_ms(_pct(samples, 95))} / {_ms(max(samples, default=0.0))}"


def _pct(samples: list[float], pct: int) -> float:
    if len(samples) < 2:
        return max(samples, default=0.0)
    return percentile(samples, pct)


def render_table(table: list[Row], notes: dict[str, Any]) -> str:
    header = Row("figure", "scheduler", "naive FIFO", "lower bound", "goal")
    cells = [
        [r.label, r.scheduler, r.fifo, r.bound, r.goal, {None: "", True: "✓", False: "✗"}[r.ok]]
        for r in table
    ]
    cells.insert(0, [header.label, header.scheduler, header.fifo, header.bound, header.goal, "ok"])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "", *(f"{k}: {v}" for k, v in notes.items())])


def notes(workload: Workload) -> dict[str, Any]:
    shape = workload.shape
    return {
        "workload": f"{len(workload.jobs)} jobs, {shape.builds} builds ({shape.hotfixes} urgent), "
        f"{workload.install_bound()} batches, {len(workload.submissions)} submissions over "
        f"{max(s.at_s for s in workload.submissions):.1f} s, burst of {shape.burst} builds "
        f"at {shape.burst_at_s:g} s, seed {shape.seed}",
        "fleet": ", ".join(f"{n} x {'+'.join(t)}" for t, n in workload.fleet),
        "durations": f"test {shape.test_s * 1000:.0f} ms, install {shape.install_s * 1000:.0f} ms",
        "aging": f"one band per {shape.aging_interval_s:g} s",
        "queue wait": "submission to the assignment that ran the job",
    }


async def bench(shape: Shape) -> tuple[Workload, Figures, Figures]:
    workload = generate(shape)
    scheduler, fifo = systems(shape)
    with tempfile.TemporaryDirectory(prefix="qgjob-schedule-") as home:
        ran = await schedule_run.run(Path(home), scheduler, workload)
        naive = await schedule_run.run(Path(home), fifo, workload.naive())
    return workload, figures(workload, ran), figures(workload, naive)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.schedule_bench")
    parser.add_argument("--quick", action="store_true", help="a small workload: a smoke run")
    parser.add_argument("--seed", type=int, default=Shape().seed, help="workload seed")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    qlogging.configure(level=logging.WARNING)
    shape = Shape(seed=args.seed)
    if args.quick:
        shape = dataclasses.replace(shape.quick(), seed=args.seed)
    workload, s, f = asyncio.run(bench(shape))
    table = rows(workload, s, f)
    if args.json:
        body = {"rows": [r.__dict__ for r in table], "notes": notes(workload)}
        print(msgspec.json.format(msgspec.json.encode(body)).decode())
    else:
        print(render_table(table, notes(workload)))


if __name__ == "__main__":
    main()
