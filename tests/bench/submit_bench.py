"""Submission throughput, dispatch latency and replay speed, each beside the raw NATS
figure measured in the same run on the same nats-server, so the ratios hold on a noisy
machine.

Run as `python -m tests.bench.submit_bench` (`just bench`); `--quick` for a smoke run,
`--json` for figures a script can read. It starts its own embedded nats-server and
PostgreSQL in a temporary directory and stops them at the end.

Order of the runs: the raw NATS figures first, then the latency run (a stack with
simulated agents, so that every job it submits is finished before the throughput run),
then single and bulk submission (a stack without agents), then the replay of the `jobs`
read model from everything the earlier runs appended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from agent.runners.simulated import SimulatedConfig
from infra import db, embedded
from infra import events as ev
from infra import logging as qlogging
from infra import nats as qnats
from projections.jobs import JobsProjection
from projections.runner import ProjectionRunner
from tests.stack import Stack, running_stack, simulated_agents

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from nats.js import JetStreamContext

    from infra import api

DESCRIPTION = "qgjob submission, latency and replay figures beside raw NATS figures."
RAW_STREAM = "BENCH_RAW"
RAW_SUBJECT = "bench.raw.msgs"
RAW_RTT_SUBJECT = "bench.raw.rtt"
RAW_DURABLE = "bench-raw"
PAYLOAD = b"x" * 300
RAW_IN_FLIGHT = 2000
FETCH_BATCH = 1000
RAW_ROUNDS = 3
RTT_SAMPLES = 500

SINGLE_CONCURRENCY = 64
BULK_PER_REQUEST = 1000
BULK_CONCURRENCY = 4
BULK_FACTOR = 4
"""The bulk run submits this many times the jobs of the single-job run."""
APP_VERSIONS = 20
LATENCY_RATE_PER_S = 100.0
LATENCY_AGENTS = 4
ZERO_DURATION = SimulatedConfig(install_s=0, test_s=0, jitter=0, fail_rate=0, seed=7)

REPLAY_SCHEMA = "qg_replay"
REPLAY_DURABLE = "bench-replay"
JOB_EVENTS = "qg.evt.job.>"
SETTLE_TIMEOUT_S = 180.0


class BenchError(Exception):
    """The system under test answered something a benchmark cannot count."""


def progress(message: str) -> None:
    """A progress line on stderr, so stdout holds only the figures."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], pct: int) -> float:
    """The `pct`-th percentile (1-99) of at least two samples."""
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


# ---------------------------------------------------------------------------- sizes


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


# ---------------------------------------------------------------------------- raw NATS


@dataclass(frozen=True)
class RawFigures:
    """What the same nats-server does for a bare client: the yardsticks."""

    publish_rate: float
    pull_ack_rate: float
    rtt_p50_ms: float


async def raw_publish_rate(js: JetStreamContext, count: int) -> float:
    """Acknowledged publishes per second with up to RAW_IN_FLIGHT in flight (the limit is
    the JetStream context's `publish_async_max_pending`)."""
    started = time.perf_counter()
    futures = [await js.publish_async(RAW_SUBJECT, PAYLOAD) for _ in range(count)]
    await asyncio.gather(*futures)
    return count / (time.perf_counter() - started)


async def raw_consumer(js: JetStreamContext) -> JetStreamContext.PullSubscription:
    """A durable pull consumer on the scratch stream, acknowledging each message."""
    await js.add_consumer(
        RAW_STREAM,
        js_api.ConsumerConfig(
            durable_name=RAW_DURABLE,
            filter_subject=RAW_SUBJECT,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            max_ack_pending=-1,
        ),
    )
    return await js.pull_subscribe_bind(RAW_DURABLE, RAW_STREAM)


async def raw_pull_ack_rate(sub: JetStreamContext.PullSubscription, count: int) -> float:
    """Messages per second through a pull consumer, fetched FETCH_BATCH at a time and
    acknowledged one by one."""
    received = 0
    started = time.perf_counter()
    while received < count:
        msgs = await sub.fetch(FETCH_BATCH, timeout=5.0)
        for msg in msgs:
            await msg.ack()
        received += len(msgs)
    await sub.consumer_info()  # a round trip after the last ack: every ack has arrived
    return received / (time.perf_counter() - started)


async def raw_publish_rtt_ms(js: JetStreamContext, samples: int) -> list[float]:
    """Round trips of single acknowledged publishes, one after another, in ms."""
    rtts: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        await js.publish(RAW_RTT_SUBJECT, PAYLOAD)
        rtts.append((time.perf_counter() - started) * 1000)
    return rtts


async def measure_raw(js: JetStreamContext, sizes: Sizes) -> RawFigures:
    """The raw NATS figures, on a scratch file stream deleted afterwards; the rates are
    the median of RAW_ROUNDS rounds of publishing and then pulling `raw_messages`."""
    await js.add_stream(
        js_api.StreamConfig(
            name=RAW_STREAM, subjects=["bench.raw.>"], storage=js_api.StorageType.FILE
        )
    )
    publish: list[float] = []
    pull: list[float] = []
    try:
        sub = await raw_consumer(js)
        for _ in range(RAW_ROUNDS):
            progress(f"raw publish, then pull-and-ack, of {sizes.raw_messages:,} messages")
            publish.append(await raw_publish_rate(js, sizes.raw_messages))
            pull.append(await raw_pull_ack_rate(sub, sizes.raw_messages))
        await sub.unsubscribe()
        progress("raw publish round trips")
        rtts = await raw_publish_rtt_ms(js, RTT_SAMPLES)
    finally:
        await js.delete_stream(RAW_STREAM)
    return RawFigures(
        publish_rate=statistics.median(publish),
        pull_ack_rate=statistics.median(pull),
        rtt_p50_ms=percentile(rtts, 50),
    )


# ---------------------------------------------------------------------------- the API


def job_specs(tag: str, count: int) -> list[dict[str, Any]]:
    """`count` distinct job specs spread over APP_VERSIONS builds."""
    return [
        {
            "org_id": "bench",
            "app_version_id": f"{tag}-v{i % APP_VERSIONS}",
            "test_path": f"tests/{tag}/t{i}.spec.js",
            "target": "emulator",
        }
        for i in range(count)
    ]


def chunks(items: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """Bulk bodies of at most `size` jobs each."""
    return [{"jobs": items[i : i + size]} for i in range(0, len(items), size)]


async def post_all(stack: Stack, bodies: Iterable[Any], concurrency: int) -> float:
    """POST every body to /jobs from `concurrency` clients at once; returns the seconds."""
    pending: Iterator[Any] = iter(bodies)

    async def client() -> None:
        for body in pending:
            status, reply = await stack.request("POST", "/jobs", body)
            if status != 201:
                raise BenchError(f"POST /jobs answered {status}: {reply}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def projectors_idle(js: JetStreamContext) -> bool:
    """Whether every durable consumer of QG_EVENTS (the read-model projectors) has applied
    and acknowledged everything in the stream."""
    consumers = await js.consumers_info(ev.EVENTS_STREAM)
    return all(
        c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers if c.config.durable_name
    )


async def wait_for_projectors(js: JetStreamContext) -> float:
    """Wait until the projectors have caught up; returns the seconds it took."""
    started = time.perf_counter()
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            if await projectors_idle(js):
                break
            await asyncio.sleep(0.05)
    return time.perf_counter() - started


@dataclass(frozen=True)
class SubmitFigures:
    """Jobs per second through `POST /jobs`."""

    single_rate: float
    bulk_rate: float
    single_catch_up_s: float
    """How long the projectors needed, after the last single submit, to catch up."""
    bulk_catch_up_s: float


async def measure_submit(
    servers: embedded.Servers, js: JetStreamContext, sizes: Sizes
) -> SubmitFigures:
    """Single-job and bulk submission through a stack with projectors and no agents."""
    async with running_stack(servers, [], with_projectors=True) as stack:
        await wait_for_projectors(js)
        await post_all(stack, job_specs("warm-submit", SINGLE_CONCURRENCY), SINGLE_CONCURRENCY)
        await wait_for_projectors(js)
        progress(f"single-job submit of {sizes.single_jobs:,} jobs")
        single_s = await post_all(stack, job_specs("single", sizes.single_jobs), SINGLE_CONCURRENCY)
        single_catch_up = await wait_for_projectors(js)
        progress(f"bulk submit of {sizes.bulk_jobs:,} jobs")
        bodies = chunks(job_specs("bulk", sizes.bulk_jobs), BULK_PER_REQUEST)
        bulk_s = await post_all(stack, bodies, BULK_CONCURRENCY)
        bulk_catch_up = await wait_for_projectors(js)
    return SubmitFigures(
        single_rate=sizes.single_jobs / single_s,
        bulk_rate=sizes.bulk_jobs / bulk_s,
        single_catch_up_s=single_catch_up,
        bulk_catch_up_s=bulk_catch_up,
    )


# ---------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyFigures:
    """Milliseconds from a job's `submitted_at` to its `started_at` and `finished_at`."""

    start_p50_ms: float
    start_p99_ms: float
    finish_p50_ms: float
    finish_p99_ms: float


async def submit_paced(stack: Stack, specs: list[dict[str, Any]], rate: float) -> list[str]:
    """Submit one job after another, the i-th at `i / rate` seconds; returns their ids."""
    ids: list[str] = []
    started = time.perf_counter()
    for i, spec in enumerate(specs):
        await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
        ids.append((await stack.submit(**spec)).job_id)
    return ids


def latencies_ms(views: list[api.JobView]) -> LatencyFigures:
    """Submit-to-start and submit-to-finish percentiles of finished jobs."""
    to_start: list[float] = []
    to_finish: list[float] = []
    for view in views:
        if view.started_at is None or view.finished_at is None:
            raise BenchError(f"job {view.job_id} ended {view.status} without running")
        to_start.append((view.started_at - view.submitted_at).total_seconds() * 1000)
        to_finish.append((view.finished_at - view.submitted_at).total_seconds() * 1000)
    return LatencyFigures(
        start_p50_ms=percentile(to_start, 50),
        start_p99_ms=percentile(to_start, 99),
        finish_p50_ms=percentile(to_finish, 50),
        finish_p99_ms=percentile(to_finish, 99),
    )


async def measure_latency(servers: embedded.Servers, sizes: Sizes) -> LatencyFigures:
    """Zero-duration jobs submitted at a steady pace to a stack with simulated agents."""
    agents = simulated_agents(LATENCY_AGENTS, runner=ZERO_DURATION, prefix="bench")
    async with running_stack(servers, agents, with_projectors=True) as stack:
        warm = [await stack.submit(**spec) for spec in job_specs("warm-latency", LATENCY_AGENTS)]
        await stack.wait_all([view.job_id for view in warm])
        progress(f"latency of {sizes.latency_jobs} jobs at {LATENCY_RATE_PER_S:.0f}/s")
        specs = job_specs("latency", sizes.latency_jobs)
        ids = await submit_paced(stack, specs, LATENCY_RATE_PER_S)
        views = await stack.wait_all(ids, timeout_s=120.0)
    return latencies_ms(views)


# ---------------------------------------------------------------------------- replay


@dataclass(frozen=True)
class ReplayFigures:
    """A rebuild of the `jobs` read model: job events applied per second."""

    rate: float
    events: int
    seconds: float
    rows: int


async def count_job_events(js: JetStreamContext) -> int:
    """How many messages QG_EVENTS holds on the job subjects (a throwaway consumer's
    pending count)."""
    info = await js.add_consumer(
        ev.EVENTS_STREAM,
        js_api.ConsumerConfig(
            filter_subject=JOB_EVENTS,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.NONE,
            inactive_threshold=10.0,
        ),
    )
    await js.delete_consumer(ev.EVENTS_STREAM, info.name)
    return info.num_pending or 0


async def replay_jobs(js: JetStreamContext, pool: db.Pool) -> float:
    """Rebuild `jobs` from sequence 1 into the pool's fresh schema; returns the seconds."""
    async with pool.acquire() as conn:
        await db.drop_schema(conn, REPLAY_SCHEMA)
        await db.migrate(conn, REPLAY_SCHEMA)
    runner = ProjectionRunner(js, pool, JobsProjection(), durable=REPLAY_DURABLE)
    started = time.perf_counter()
    await runner.run(asyncio.Event(), catch_up=True)
    return time.perf_counter() - started


async def measure_replay(servers: embedded.Servers, js: JetStreamContext) -> ReplayFigures:
    """Replay speed of the `jobs` read model over everything the earlier runs appended."""
    events = await count_job_events(js)
    progress(f"replay of {events:,} job events")
    pool = await db.create_pool(servers.database_url, schema=REPLAY_SCHEMA)
    try:
        seconds = await replay_jobs(js, pool)
        async with pool.acquire() as conn:
            rows = int(await conn.fetchval("SELECT count(*) FROM jobs") or 0)
            await db.drop_schema(conn, REPLAY_SCHEMA)
    finally:
        await pool.close()
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(ev.EVENTS_STREAM, REPLAY_DURABLE)
    return ReplayFigures(rate=events / seconds, events=events, seconds=seconds, rows=rows)


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


@dataclass(frozen=True)
class Results:
    """Everything one run measured."""

    sizes: Sizes
    raw: RawFigures
    latency: LatencyFigures
    submit: SubmitFigures
    replay: ReplayFigures


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
    """Context for the figures: sizes and side measurements."""
    return {
        "sizes": asdict(r.sizes),
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


async def run_all(servers: embedded.Servers, sizes: Sizes) -> Results:
    """Every run, on one nats-server and one PostgreSQL."""
    nc = await qnats.connect(servers.nats_url, name="qgjob-bench")
    try:
        js = nc.jetstream(publish_async_max_pending=RAW_IN_FLIGHT)
        raw = await measure_raw(js, sizes)
        latency = await measure_latency(servers, sizes)
        submit = await measure_submit(servers, js, sizes)
        replay = await measure_replay(servers, js)
    finally:
        await nc.drain()
    return Results(sizes=sizes, raw=raw, latency=latency, submit=submit, replay=replay)


async def bench(sizes: Sizes) -> Results:
    """Start embedded servers in a temporary directory, run, and stop them."""
    with tempfile.TemporaryDirectory(prefix="qgjob-bench-") as home:
        progress("starting nats-server and PostgreSQL")
        async with embedded.servers(Path(home), None, None) as servers:
            return await run_all(servers, sizes)


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
