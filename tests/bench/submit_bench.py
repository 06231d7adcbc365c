"""Submission throughput, dispatch latency and replay speed, each beside the raw NATS
figure measured in the same run on the same nats-server, so the ratios hold on a noisy
machine.

Run as `python -m tests.bench.submit_bench` (`just bench`); `--quick` for a smoke run,
`--json` for figures a script can read. It starts its own embedded nats-server and
PostgreSQL in a temporary directory and stops them at the end.

Order of the runs: the raw NATS figures first (`raw`), then the latency run (`latency`:
orchestrator, projectors and simulated agents as separate processes, so that every job
it submits is finished before the throughput run), then single and bulk submission
(`throughput`: orchestrator and projectors as separate processes, no agents, the bench
process only the HTTP client), then the replay of the `jobs` read model from everything
the earlier runs appended (`replay`, in the bench process). This module sizes the runs,
runs them in order and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec

from infra import embedded
from infra import logging as qlogging
from infra import nats as qnats
from tests.bench.latency import LATENCY_AGENTS, LatencyFigures, measure_latency
from tests.bench.measure import progress
from tests.bench.raw import RAW_IN_FLIGHT, RawFigures, measure_raw
from tests.bench.replay import ReplayFigures, measure_replay
from tests.bench.throughput import (
    BULK_PER_REQUEST,
    SINGLE_CONCURRENCY,
    SubmitFigures,
    measure_submit,
)

DESCRIPTION = "qgjob submission, latency and replay figures beside raw NATS figures."
BULK_FACTOR = 4
"""The bulk run submits this many times the jobs of the single-job run."""
HOW_RUN = {
    "latency_run": "processes: qgjob serve, qgjob project, "
    f"qgjob agent --slots {LATENCY_AGENTS} (zero-duration simulated jobs)",
    "submit_runs": "processes: qgjob serve, qgjob project, no agents; "
    "the bench process is only the HTTP client",
    "replay_run": "in the bench process (the projector code path itself)",
}


@dataclass(frozen=True)
class Sizes:
    """How much work each run does."""

    raw_messages: int
    single_jobs: int
    bulk_jobs: int
    latency_jobs: int

    @property
    def total_jobs(self) -> int:
        """Every job the runs submit, warm-ups included: what a replay must rebuild."""
        warm_ups = SINGLE_CONCURRENCY + LATENCY_AGENTS
        return self.single_jobs + self.bulk_jobs + self.latency_jobs + warm_ups

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        """The default sizes, the `--quick` ones, or `--jobs` for the submit runs."""
        quick: bool = args.quick
        single: int = args.jobs or (1000 if quick else 5000)
        return cls(
            raw_messages=5000 if quick else 20_000,
            single_jobs=single,
            bulk_jobs=max(BULK_PER_REQUEST, single * BULK_FACTOR),
            latency_jobs=100 if quick else 300,
        )


@dataclass(frozen=True)
class Results:
    """Everything one run measured."""

    sizes: Sizes
    raw: RawFigures
    latency: LatencyFigures
    submit: SubmitFigures
    replay: ReplayFigures


# ---------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Goal:
    """A lower bound, on the figure itself or on its ratio to the raw figure."""

    at_least: float
    on_ratio: bool

    def text(self, unit: str) -> str:
        return f">= {self.at_least:g}x raw" if self.on_ratio else f">= {self.at_least:,.0f} {unit}"


@dataclass(frozen=True)
class Figure:
    """One measured figure, with the raw NATS figure of the same run it is set beside."""

    key: str
    label: str
    value: float
    unit: str
    raw: Figure | None = None
    goal: Goal | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.raw is None else self.value / self.raw.value

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        measured = self.ratio if self.goal.on_ratio else self.value
        return measured is not None and measured >= self.goal.at_least

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "raw": None if self.raw is None else self.raw.key,
            "raw_value": None if self.raw is None else self.raw.value,
            "ratio": self.ratio,
            "goal": None if self.goal is None else self.goal.text(self.unit),
            "met": self.met,
        }


def figures(r: Results) -> list[Figure]:
    """The printed figures, each with the raw figure it is compared with."""
    publish = Figure("raw_publish", "raw acked publish", r.raw.publish_rate, "msgs/s")
    pull = Figure("raw_pull_ack", "raw pull-and-ack", r.raw.pull_ack_rate, "msgs/s")
    rtt = Figure("raw_publish_rtt_p50", "raw publish RTT p50", r.raw.rtt_p50_ms, "ms")
    half_of_raw = Goal(0.5, on_ratio=True)
    lat = r.latency
    return [
        publish,
        pull,
        rtt,
        Figure(
            "submit_single",
            "submit, 1 job/request",
            r.submit.single_rate,
            "jobs/s",
            publish,
            Goal(2000, on_ratio=False),
        ),
        Figure(
            "submit_bulk",
            f"submit, {BULK_PER_REQUEST} jobs/request",
            r.submit.bulk_rate,
            "jobs/s",
            publish,
            half_of_raw,
        ),
        Figure("start_p50", "submit-to-start p50", lat.start_p50_ms, "ms", rtt),
        Figure("start_p99", "submit-to-start p99", lat.start_p99_ms, "ms", rtt),
        Figure("finish_p50", "submit-to-finish p50", lat.finish_p50_ms, "ms", rtt),
        Figure("finish_p99", "submit-to-finish p99", lat.finish_p99_ms, "ms", rtt),
        Figure("replay_jobs", "replay of jobs model", r.replay.rate, "events/s", pull, half_of_raw),
    ]


def notes(r: Results) -> dict[str, Any]:
    """Context for the figures: sizes, how each run ran, and side measurements."""
    return {
        "sizes": asdict(r.sizes),
        "cpus": os.cpu_count(),
        **HOW_RUN,
        "projector_catch_up_after_single_s": round(r.submit.single_catch_up_s, 3),
        "projector_catch_up_after_bulk_s": round(r.submit.bulk_catch_up_s, 3),
        "replay_events": r.replay.events,
        "replay_seconds": round(r.replay.seconds, 3),
        "replay_rows": r.replay.rows,
        "jobs_submitted": r.sizes.total_jobs,
    }


def fmt_value(value: float, unit: str) -> str:
    return f"{value:,.2f} {unit}" if unit == "ms" else f"{value:,.0f} {unit}"


def table_row(f: Figure) -> list[str]:
    ratio = "" if f.ratio is None else f"{f.ratio:.2f}x"
    raw = ["", ""] if f.raw is None else [f.raw.label, fmt_value(f.raw.value, f.raw.unit)]
    goal = "" if f.goal is None else f.goal.text(f.unit)
    mark = {None: "", True: "✓", False: "✗"}[f.met]
    return [f.label, fmt_value(f.value, f.unit), *raw, ratio, goal, mark]


def render_table(figs: list[Figure], extra: dict[str, Any]) -> str:
    """A plain-text table, then the notes."""
    header = ["figure", "value", "raw figure", "raw", "ratio", "goal", "ok"]
    rows = [header, *(table_row(f) for f in figs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(f"{key}: {value}" for key, value in extra.items())
    return "\n".join(lines)


def render_json(figs: list[Figure], extra: dict[str, Any]) -> str:
    body = {"figures": [f.as_json() for f in figs], "notes": extra}
    return msgspec.json.format(msgspec.json.encode(body)).decode()


# ---------------------------------------------------------------------------- main


async def run_all(servers: embedded.Servers, log_dir: Path, sizes: Sizes) -> Results:
    """Every run, on one nats-server and one PostgreSQL; component logs in `log_dir`."""
    nc = await qnats.connect(servers.nats_url, name="qgjob-bench")
    try:
        js = nc.jetstream(publish_async_max_pending=RAW_IN_FLIGHT)
        raw = await measure_raw(js, sizes.raw_messages)
        latency = await measure_latency(servers, js, log_dir, sizes.latency_jobs)
        submit = await measure_submit(servers, js, log_dir, sizes.single_jobs, sizes.bulk_jobs)
        replay = await measure_replay(servers, js)
    finally:
        await nc.drain()
    return Results(sizes=sizes, raw=raw, latency=latency, submit=submit, replay=replay)


async def bench(sizes: Sizes) -> Results:
    """Start embedded servers in a temporary directory, run, and stop them."""
    with tempfile.TemporaryDirectory(prefix="qgjob-bench-") as home:
        progress("starting nats-server and PostgreSQL")
        async with embedded.servers(Path(home), None, None) as servers:
            return await run_all(servers, Path(home), sizes)


def positive(text: str) -> int:
    """An argparse type: an integer above zero."""
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.submit_bench", description=DESCRIPTION
    )
    parser.add_argument(
        "--jobs",
        type=positive,
        default=None,
        help=f"jobs of the single-job run (default 5000; bulk: {BULK_FACTOR}x)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run < 30 s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # pgserver asks platformdirs for a runtime dir it does not use; keep stderr readable.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    qlogging.configure(level=logging.WARNING)
    results = asyncio.run(bench(Sizes.from_args(args)))
    figs, extra = figures(results), notes(results)
    print(render_json(figs, extra) if args.json else render_table(figs, extra))


if __name__ == "__main__":
    main()
