"""Human output with rich, and `--json` output with msgspec."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TextIO, TypeVar

import msgspec
import typer
from rich.console import Console, Group, RenderableType
from rich.status import Status
from rich.table import Table
from rich.text import Text

from infra import api, rpc
from infra.api import BACKOFF_BAND
from infra.events import TERMINAL_STATUSES, JobStatus, utcnow

PIPE_WIDTH = 200
"""Line width when output is not a terminal, so that piped tables are not cut at 80."""


def _console(stream: TextIO, *, stderr: bool = False) -> Console:
    # Markup is off so that test paths and reasons containing `[...]` print as they are.
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(stderr=stderr, markup=False, highlight=False, width=width)


out = _console(sys.stdout)
err = _console(sys.stderr, stderr=True)

_STATUS_STYLES: dict[str, str] = {
    JobStatus.QUEUED: "dim",
    JobStatus.ASSIGNED: "cyan",
    JobStatus.RUNNING: "cyan",
    JobStatus.PASSED: "green",
    JobStatus.FAILED: "bold red",
    JobStatus.ERRORED: "yellow",
    JobStatus.CANCELLED: "magenta",
    JobStatus.DEAD: "bold magenta",
    "retried": "yellow",
    "released": "dim",
}
"""Job statuses and attempt outcomes."""
_PROGRESS_ORDER = sorted(JobStatus, key=lambda status: status not in TERMINAL_STATUSES)
"""Finished states first, as in `3/5 done: 2 passed, 1 failed, 2 running`."""
_NONE = "-"

S = TypeVar("S", bound=msgspec.Struct)


def print_json(value: msgspec.Struct | Sequence[msgspec.Struct]) -> None:
    """Write one pretty JSON document to stdout."""
    typer.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def show(value: S, view: Callable[[S], RenderableType], *, as_json: bool) -> None:
    """Print `value` as one JSON document, or as `view` renders it for people."""
    if as_json:
        print_json(value)
    else:
        out.print(view(value))


def _status_text(status: str) -> Text:
    """A job status or attempt outcome, coloured by what it means."""
    return Text(str(status), style=_STATUS_STYLES[status])


def job_detail(job: api.JobView) -> RenderableType:
    """Everything the API knows about one job, as a two-column sheet."""
    sheet = Table.grid(padding=(0, 2))
    sheet.add_column(style="bold")
    sheet.add_column(overflow="fold")
    rows: list[tuple[str, str | Text]] = [
        ("job", job.job_id),
        ("status", _status_text(job.status)),
        ("test", job.test_path),
        ("target", job.target.value),
        ("priority", str(job.priority)),
        ("org", job.org_id),
        ("app version", job.app_version_id),
        ("batch", job.batch_id),
        ("agent", job.agent_id or _NONE),
        ("attempt", f"{job.attempt} (test retries allowed: {job.retries})"),
        ("timeout", duration(job.timeout_s)),
        ("submitted", _moment(job.submitted_at)),
        ("assigned", _moment(job.assigned_at)),
        ("started", _moment(job.started_at)),
        ("finished", _moment(job.finished_at)),
        ("duration", duration(job.duration_s)),
        ("reason", job.reason or _NONE),
        *([("retry after", _moment(job.not_before))] if job.not_before else []),
        ("log", job.log_ref or _NONE),
        ("idempotency key", job.idempotency_key or _NONE),
        ("history", " -> ".join(job.events) or _NONE),
    ]
    for name, value in rows:
        sheet.add_row(name, value)
    if not job.attempts:
        return sheet
    return Group(sheet, Text(), attempts_table(job.attempts))


def attempts_table(attempts: Sequence[api.AttemptView]) -> Table:
    """Each run of a job: where, when, how it ended and why."""
    table = _table("try", "agent", "outcome", "started", "duration", "reason", title="attempts")
    for run in attempts:
        table.add_row(
            str(run.attempt),
            run.agent_id,
            _status_text(run.outcome),
            _moment(run.started_at or run.assigned_at),
            duration(run.duration_s),
            run.reason or _NONE,
        )
    return table


def jobs_view(page: api.JobPage) -> RenderableType:
    """A table of jobs, one row each, and how to see the next page."""
    table = _table(
        "job", "status", "pri", "target", "org", "app version", "test", "try", "agent", "submitted"
    )
    for job in page.jobs:
        table.add_row(
            job.job_id,
            _status_text(job.status),
            str(job.priority),
            job.target.value,
            job.org_id,
            job.app_version_id,
            job.test_path,
            str(job.attempt),
            job.agent_id or _NONE,
            _ago(job.submitted_at),
        )
    if page.next_cursor is None:
        return table
    return Group(table, Text(f"more: add --cursor {page.next_cursor} for the next page"))


def summary_table(jobs: Sequence[api.JobView]) -> Table:
    """The outcome of each waited-for job: id, test, status, duration and reason."""
    table = _table("job", "test", "status", "duration", "reason")
    for job in jobs:
        table.add_row(
            job.job_id,
            job.test_path,
            _status_text(job.status),
            duration(job.duration_s),
            job.reason or "",
        )
    return table


def progress_line(jobs: Sequence[api.JobView]) -> Text:
    """E.g. `3/5 done: 2 passed, 1 failed, 2 running`."""
    counts = Counter(job.status for job in jobs)
    done = sum(n for status, n in counts.items() if status in TERMINAL_STATUSES)
    parts = [f"{counts[status]} {status.value}" for status in _PROGRESS_ORDER if counts[status]]
    return Text(f"{done}/{len(jobs)} done: {', '.join(parts)}")


def queue_view(queue: api.QueueView) -> RenderableType:
    """Per target and dispatch band: queued jobs, batches, orgs and the oldest wait; the
    open batches with their band and the agents on them; how many jobs run."""
    aging = queue.aging_interval_s
    bands = _table(
        *("target", "band", "pending", "batches", "orgs", "oldest wait"),
        title=f"queued, by dispatch band ({aging_note(aging)})",
    )
    for band in queue.bands:
        bands.add_row(
            band.target.value,
            band_name(band.band),
            str(band.pending),
            str(band.batches),
            ", ".join(band.orgs),
            _ago(band.oldest_queued_at),
        )
    batches = _batches_table(queue.open_batches, short_ids=True, title="open batches")
    running = Text(f"running: {queue.running} job(s)")
    return Group(bands, Text(), batches, Text(), running)


def band_name(band: int | None) -> str:
    """`5` ... `1`; `backoff` while every queued job waits for its retry backoff."""
    if band is None:
        return _NONE
    return "backoff" if band == BACKOFF_BAND else str(band)


def aging_note(aging_interval_s: float | None) -> str:
    """`one band up per 2m waited`, or `no aging`."""
    if aging_interval_s is None:
        return "no aging"
    return f"one band up per {duration(aging_interval_s)} waited"


def batches_view(page: api.BatchPage) -> RenderableType:
    """A table of batches: one row per (org, app version, target) group."""
    return _batches_table(page.batches, short_ids=False)


def _batches_table(
    batches: Sequence[api.BatchView], *, short_ids: bool, title: str | None = None
) -> Table:
    """Batches and their jobs; batches of the queue also show their band and the agents
    working on them (instead of the last agent)."""
    queued = bool(batches) and all(isinstance(b, api.QueueBatch) for b in batches)
    table = _table(
        *("batch", "org", "app version", "target", "jobs", "pend", "active", "pass", "fail"),
        *("other", "inst", "pri"),
        *(("band", "agents") if queued else ("last agent",)),
        title=title,
    )
    for batch in batches:
        cells = [
            batch.batch_id[:9] if short_ids else batch.batch_id,
            batch.org_id,
            batch.app_version_id,
            batch.target.value,
            str(batch.jobs),
            str(batch.pending),
            str(batch.active),
            str(batch.passed),
            str(batch.failed),
            str(batch.other),
            str(batch.installs),
            _NONE if batch.top_priority is None else str(batch.top_priority),
        ]
        if isinstance(batch, api.QueueBatch):
            cells += [band_name(batch.band), ", ".join(batch.agents) or _NONE]
        else:
            cells.append(batch.last_agent_id or _NONE)
        table.add_row(*cells)
    return table


def agents_view(page: api.AgentPage) -> RenderableType:
    """A table of agents and what each is doing."""
    table = _table(
        "agent", "status", "targets", "runner", "host", "batch", "jobs", "inst", "last seen"
    )
    for agent in page.agents:
        table.add_row(
            agent.agent_id,
            agent.status,
            ",".join(target.value for target in agent.targets),
            agent.runner,
            agent.hostname,
            agent.batch_id or _NONE,
            str(agent.jobs_run),
            str(agent.installs),
            _ago(agent.last_event_at),
        )
    return table


def health_view(health: api.Health) -> RenderableType:
    """E.g. `ok: nats up, database up, 3 projectors, projector lag 0`."""
    lag = _NONE if health.projector_lag is None else str(health.projector_lag)
    projectors = _NONE if health.projectors is None else str(health.projectors)
    return Text.assemble(
        (health.status, "green" if health.status == "ok" else "bold red"),
        f": nats {_up(health.nats)}, database {_up(health.database)}, "
        f"{projectors} projectors, projector lag {lag}",
    )


def cancelled(result: api.CancelResult) -> RenderableType:
    """`cancelled 3 jobs (1 had already finished)` and their ids."""
    done = result.already_finished
    note = f" ({done} had already finished)" if done else ""
    lines = [f"cancelled {len(result.cancelled)} job(s){note}"]
    lines += [f"  {job.job_id}  {job.test_path}" for job in result.cancelled]
    return Text("\n".join(lines))


def tokens_view(tokens: api.TokenPage | api.TokenView) -> RenderableType:
    """API tokens: id, org, role, name, created, revoked."""
    rows = tokens.tokens if isinstance(tokens, api.TokenPage) else [tokens]
    table = _table("token", "org", "role", "name", "created", "revoked")
    for t in rows:
        table.add_row(
            t.token_id,
            t.org_id or "(all)",
            t.role.value,
            t.name or _NONE,
            _ago(t.created_at),
            "[bold red]revoked[/]" if t.revoked else "no",
        )
    return table


def ops_view(report: rpc.OpsResponse) -> RenderableType:
    """One row per rebuilt read model; a verify adds how many rows differ."""
    verifying = any(p.differing is not None for p in report.projections)
    headers = ["read model", "stream seq", "rows", *(["differing"] if verifying else [])]
    title = f"rebuilt in {report.seconds:.2f} s"
    if report.schema is not None:
        title += f", kept in schema {report.schema}"
    table = _table(*headers, title=title)
    for p in report.projections:
        cells = [p.projection, str(p.last_seq), str(p.rows)]
        if verifying:
            style = "green" if not p.differing else "bold red"
            cells.append(f"[{style}]{p.differing}[/]")
        table.add_row(*cells)
    return table


def _moment(when: datetime | None) -> str:
    """Local wall-clock time plus age, e.g. `14:03:27 (3s ago)`."""
    if when is None:
        return _NONE
    local = when.astimezone()
    today = utcnow().astimezone().date()
    clock = local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")
    return f"{clock} ({_ago(when)})"


def _ago(when: datetime | None) -> str:
    """How long ago, coarsely: `42s ago`, `5m ago`, `3h ago`, `2d ago`."""
    return _NONE if when is None else f"{age(when, utcnow())} ago"


def age(when: datetime, now: datetime) -> str:
    """The time from `when` to `now`, coarsely: `42s`, `5m`, `3h`, `2d`."""
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def duration(seconds: float | None) -> str:
    """`3.2s`, or `4m05s` from a minute on."""
    if seconds is None:
        return _NONE
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _table(*headers: str, title: str | None = None) -> Table:
    """A borderless table whose first column (an id) is kept on one line."""
    table = Table(box=None, header_style="bold", title=title, title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, no_wrap=index == 0)
    return table


def _up(ok: bool) -> str:
    return "up" if ok else "DOWN"


class Progress:
    """A progress line on stderr: live on a terminal, one plain line per change otherwise."""

    def __init__(self) -> None:
        self._live: Status | None = None
        self._last = ""

    def __enter__(self) -> Progress:
        if err.is_terminal:
            self._live = err.status("waiting")
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, line: Text) -> None:
        """Show the current state; unchanged lines are not repeated."""
        if line.plain == self._last:
            return
        self._last = line.plain
        if self._live is not None:
            self._live.update(line)
        else:
            typer.echo(line.plain, err=True)
