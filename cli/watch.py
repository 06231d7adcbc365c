"""`qgjob queue watch`: a live view of the bands, open batches, agents and latest verdicts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli import render
from cli.client import ApiError, ApiUnreachable
from infra import api
from infra.events import JobStatus, utcnow

LATEST = 10
"""How many verdicts the view shows."""
VERDICTS = (JobStatus.PASSED, JobStatus.FAILED, JobStatus.DEAD)
TEST_WIDTH = 28
"""Test paths up to this long stay on one line in an 80-column terminal."""
SHORT_ID = 9
"""Batch ids are cut to this length, as in `qgjob queue status`."""
_NONE = "-"
_AGENT_STYLES = {"busy": "cyan", "idle": "green", "lost": "bold red", "stopped": "dim"}
_VERDICT_STYLES = {
    JobStatus.PASSED: "green",
    JobStatus.FAILED: "bold red",
    JobStatus.DEAD: "bold magenta",
}


class Source(Protocol):
    """What the watch reads; `cli.client.ApiClient` is one."""

    base_url: str

    async def queues(self) -> api.QueueView: ...

    async def agents(self) -> api.AgentPage: ...

    async def jobs(self, *, status: JobStatus | None = None, limit: int = 50) -> api.JobPage: ...


async def watch(
    client: Source, *, interval_s: float, console: Console, iterations: int | None = None
) -> int:
    """Refresh a live screen from the API every `interval_s` until Ctrl-C (or `iterations`).

    An unreachable API, or one answering 429 or 5xx, shows a one-line panel and is retried at
    the next refresh; any other CliError (a rejected token, a bad answer) ends the watch. Ctrl-C
    under `asyncio.run` cancels the main task: the watch takes that cancellation as its end,
    leaves the last frame on screen and returns 0, so it must be run as the top-level task.
    """
    last_update: datetime | None = None
    with Live(Text("connecting to the qgjob API…"), console=console, auto_refresh=False) as live:
        try:
            for refresh in itertools.count() if iterations is None else range(iterations):
                if refresh:
                    await asyncio.sleep(interval_s)
                try:
                    queue, agents, latest = await fetch(client)
                except (ApiUnreachable, ApiError) as exc:
                    if isinstance(exc, ApiError) and not _transient(exc.status):
                        raise
                    live.update(unreachable(exc, last_update), refresh=True)
                    continue
                last_update = utcnow()
                frame = screen(queue, agents, latest, now=last_update, api_url=client.base_url)
                live.update(frame, refresh=True)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the cancellation is consumed here, not passed on
        except KeyboardInterrupt:
            pass  # Ctrl-C raises here instead when asyncio.run's handler is not installed
    return 0


async def fetch(client: Source) -> tuple[api.QueueView, api.AgentPage, api.JobPage]:
    """The queues, the agents and the latest verdicts, asked for concurrently."""
    # return_exceptions: every request ends before the first error is raised, none is orphaned.
    results = await asyncio.gather(
        client.queues(),
        client.agents(),
        *(client.jobs(status=status, limit=LATEST) for status in VERDICTS),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    queue, agents, *pages = results
    assert isinstance(queue, api.QueueView)
    assert isinstance(agents, api.AgentPage)
    jobs = [job for page in pages if isinstance(page, api.JobPage) for job in page.jobs]
    jobs.sort(key=lambda job: job.finished_at or job.submitted_at, reverse=True)
    return queue, agents, api.JobPage(jobs=jobs[:LATEST])


def screen(
    queue: api.QueueView,
    agents: api.AgentPage,
    latest: api.JobPage,
    *,
    now: datetime,
    api_url: str,
) -> RenderableType:
    """One frame: a header line, then bands and agents (side by side when they fit), the
    open batches and the latest verdicts."""
    pending = sum(band.pending for band in queue.bands)
    header = Text.assemble(
        ("qgjob queue watch", "bold"),
        f"  {now.astimezone():%H:%M:%S}  running {queue.running}  pending {pending}  ",
        (api_url, "dim"),
    )
    return Group(
        header,
        Text(),
        Columns([bands_table(queue.bands, now), agents_table(agents.agents)], padding=(1, 4)),
        Text(),
        batches_table(queue.open_batches),
        Text(),
        verdicts_table(latest.jobs),
    )


def bands_table(bands: Sequence[api.QueueBand], now: datetime) -> RenderableType:
    """Queued jobs, batches and the oldest wait per target and dispatch band."""
    if not bands:
        return Text("pending jobs: none", style="dim")
    table = _table("target", "band", "pending", "batches", "oldest wait", title="pending jobs")
    for band in bands:
        table.add_row(
            band.target.value,
            render.band_name(band.band),
            str(band.pending),
            str(band.batches),
            _wait(band, now),
        )
    return table


def agents_table(agents: Sequence[api.AgentView]) -> RenderableType:
    """Each agent's status, batch, jobs run and installs."""
    if not agents:
        return Text("agents: none registered", style="dim")
    table = _table("agent", "status", "batch", "jobs", "inst", title="agents")
    for agent in agents:
        table.add_row(
            Text(agent.agent_id),
            Text(agent.status, style=_AGENT_STYLES.get(agent.status, "")),
            _short(agent.batch_id),
            str(agent.jobs_run),
            str(agent.installs),
        )
    return table


def batches_table(batches: Sequence[api.QueueBatch]) -> RenderableType:
    """Open batches: whose build, on which target, in which band, how far along, and the
    agents working on them."""
    if not batches:
        return Text("open batches: none", style="dim")
    headers = ("batch", "org", "app version", "target", "band", "pend", "act", "pass", "fail")
    table = _table(*headers, "agents", title="open batches")
    for batch in batches:
        table.add_row(
            _short(batch.batch_id),
            Text(batch.org_id),
            Text(batch.app_version_id),
            batch.target.value,
            render.band_name(batch.band),
            str(batch.pending),
            str(batch.active),
            str(batch.passed),
            Text(str(batch.failed), style="bold red" if batch.failed else ""),
            Text(", ".join(batch.agents) or _NONE),
        )
    return table


def verdicts_table(jobs: Sequence[api.JobView]) -> RenderableType:
    """The latest verdicts, one line each: the full job id and test, a cut-short reason."""
    if not jobs:
        return Text("latest verdicts: none yet", style="dim")
    return _Verdicts(jobs)


class _Verdicts:
    """The verdicts table, laid out for the width it is given."""

    def __init__(self, jobs: Sequence[api.JobView]) -> None:
        self.jobs = jobs

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = _table("job", "test", "status", "took", "reason", title="latest verdicts")
        if options.max_width >= 80:
            # Cut the reason short before folding a (usually short) test path; narrower
            # terminals fold it, so that the status stays visible.
            longest = max(len(job.test_path) for job in self.jobs)
            table.columns[1].min_width = min(TEST_WIDTH, longest)
        for job in self.jobs:
            table.add_row(
                job.job_id,
                Text(job.test_path, overflow="fold"),
                Text(job.status.value, style=_VERDICT_STYLES.get(job.status, "")),
                render.duration(job.duration_s),
                # One line per verdict keeps the frame's height steady.
                Text(job.reason or "", no_wrap=True, overflow="ellipsis"),
            )
        yield table


def unreachable(error: ApiUnreachable | ApiError, last_update: datetime | None) -> Panel:
    """The one-line panel shown while the API does not answer (or answers 429 or 5xx)."""
    if isinstance(error, ApiUnreachable):
        line = f"API unreachable at {error.base_url}, retrying…"
    else:
        line = f"API error (HTTP {error.status}: {error}), retrying…"
    if last_update is not None:
        line += f" last update {last_update.astimezone():%H:%M:%S}"
    return Panel(Text(line), border_style="red", expand=False)


def _table(*headers: str, title: str) -> Table:
    """A borderless table whose first column (an id) is kept on one line."""
    table = Table(box=None, header_style="bold", title=title, title_justify="left")
    for index, header in enumerate(headers):
        table.add_column(header, no_wrap=index == 0)
    return table


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


def _short(batch_id: str | None) -> Text:
    return Text(_NONE if batch_id is None else batch_id[:SHORT_ID])


def _wait(band: api.QueueBand, now: datetime) -> str:
    """How long the band's oldest job has waited, coarsely: `42s`, `5m`, `3h`, `2d`."""
    oldest = band.oldest_queued_at
    return _NONE if oldest is None else render.age(oldest, now)
