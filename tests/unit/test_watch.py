"""`qgjob queue watch`: one frame as a user reads it, and the refresh loop against a fake API."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console, RenderableType

from cli import watch
from cli.client import ApiError, ApiUnreachable
from infra import api
from infra.events import JobStatus, Target
from tests.unit import factories

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
URL = "http://127.0.0.1:8420"
BATCH = "b0123456789abcdef0123"

MakeJob = factories.MakeJobView


def text_of(frame: RenderableType, width: int = 100) -> str:
    """What a terminal `width` columns wide shows, without colours."""
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(frame)
    return console.export_text()


def line_with(text: str, *words: str) -> str:
    """The one line of `text` that holds every word (fails when none or several do)."""
    lines = [line for line in text.splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, f"expected one line with {words} in:\n{text}"
    return lines[0]


@pytest.fixture
def job() -> MakeJob:
    """Finished jobs of the open batch, the most recent first."""
    return factories.job_views(
        batch_id=BATCH,
        submitted_at=NOW - timedelta(minutes=1),
        finished_at=NOW - timedelta(seconds=1),
        duration_s=3.25,
    )


def queue() -> api.QueueView:
    """Two bands (the device one aged from priority 1) and one open batch with a failure
    in it, worked by one agent."""
    bands = [
        api.QueueBand(
            target=Target.EMULATOR,
            band=5,
            pending=3,
            batches=1,
            orgs=["qualgent"],
            oldest_queued_at=NOW - timedelta(seconds=42),
        ),
        api.QueueBand(
            target=Target.DEVICE,
            band=3,
            pending=12,
            batches=2,
            orgs=["acme", "qualgent"],
            oldest_queued_at=NOW - timedelta(minutes=5),
        ),
    ]
    batch = api.QueueBatch(
        batch_id=BATCH,
        org_id="qualgent",
        app_version_id="xyz123",
        target=Target.EMULATOR,
        created_at=NOW,
        installs=1,
        jobs=6,
        pending=3,
        active=1,
        passed=1,
        failed=1,
        other=0,
        top_priority=5,
        last_agent_id="sim-emulator-1",
        band=5,
        agents=["sim-emulator-1"],
    )
    return api.QueueView(bands=bands, open_batches=[batch], running=2, aging_interval_s=120)


def agents() -> api.AgentPage:
    """One busy agent on the open batch."""
    agent = api.AgentView(
        agent_id="sim-emulator-1",
        targets=[Target.EMULATOR],
        runner="simulated",
        hostname="ci-host",
        status="busy",
        registered_at=NOW,
        last_event_at=NOW,
        batch_id=BATCH,
        jobs_run=7,
        installs=2,
    )
    return api.AgentPage(agents=[agent])


def latest(job: MakeJob) -> api.JobPage:
    """A failed verdict with its reason, then a passed one."""
    failed = job(JobStatus.FAILED, reason="expected total 42.00, got 41.99")
    return api.JobPage(jobs=[failed, job()])


def test_screen_shows_header_bands_batches_agents_and_verdicts(job: MakeJob) -> None:
    page = latest(job)
    text = text_of(watch.screen(queue(), agents(), page, now=NOW, api_url=URL))

    header = text.splitlines()[0]
    assert f"{NOW.astimezone():%H:%M:%S}" in header
    assert "running 2" in header
    assert "pending 15" in header
    assert URL in header
    assert line_with(text, "emulator", "5", "3", "1", "42s").split()[:5] == [
        *("emulator", "5", "3", "1", "42s")
    ]
    assert line_with(text, "device", "12", "5m").split()[:5] == ["device", "3", "12", "2", "5m"]
    batch = line_with(text, "qualgent", "xyz123", "emulator")
    assert batch.split() == [
        BATCH[:9],
        "qualgent",
        "xyz123",
        "emulator",
        *"53111",
        "sim-emulator-1",
    ]
    assert line_with(text, "sim-emulator-1", "busy", BATCH[:9], "7", "2")
    failed = line_with(text, page.jobs[0].job_id)
    assert "failed" in failed
    assert "expected total 42.00, got 41.99" in failed
    assert "3.2s" in failed
    assert "passed" in line_with(text, page.jobs[1].job_id)


def test_screen_fits_80_columns_keeping_job_ids(job: MakeJob) -> None:
    long_reason = "assertion failed: " + "the cart total was wrong " * 8
    page = api.JobPage(jobs=[job(JobStatus.FAILED, reason=long_reason), job(JobStatus.DEAD)])
    text = text_of(watch.screen(queue(), agents(), page, now=NOW, api_url=URL), width=80)

    assert max(len(line) for line in text.splitlines()) <= 80
    failed, dead = page.jobs
    failed_line = line_with(text, failed.job_id)
    assert failed.test_path in failed_line
    assert "assertion failed" in failed_line, "one line, with the reason cut short"
    assert "dead" in line_with(text, dead.job_id)
    assert line_with(text, "device", "12", "5m")


def test_screen_says_when_there_is_nothing_to_show() -> None:
    empty = api.QueueView(bands=[], open_batches=[], running=0)
    frame = watch.screen(
        empty, api.AgentPage(agents=[]), api.JobPage(jobs=[]), now=NOW, api_url=URL
    )
    text = text_of(frame)

    for line in (
        "pending jobs: none",
        "agents: none registered",
        "open batches: none",
        "latest verdicts: none yet",
    ):
        assert line in text


class FakeApi:
    """Answers like the API, or raises the errors it is given, one per refresh."""

    base_url = URL

    def __init__(self, job: MakeJob, failures: list[Exception | None] | None = None) -> None:
        self.failures = failures or []
        self.refreshes = 0
        self.job = job
        self.asked: list[tuple[JobStatus | None, int]] = []
        self.second_refresh = asyncio.Event()

    async def queues(self) -> api.QueueView:
        self.refreshes += 1
        if self.refreshes == 2:
            self.second_refresh.set()
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        return queue()

    async def agents(self) -> api.AgentPage:
        return agents()

    async def jobs(self, *, status: JobStatus | None = None, limit: int = 50) -> api.JobPage:
        self.asked.append((status, limit))
        return api.JobPage(jobs=[self.job(status) for _ in range(limit)])


def terminal() -> Console:
    """A recording terminal, so that every refresh (not only the last) is written."""
    return Console(record=True, width=100, file=io.StringIO(), force_terminal=True)


async def test_fetch_merges_the_newest_verdicts_of_each_kind(job: MakeJob) -> None:
    client = FakeApi(job)
    _, _, page = await watch.fetch(client)

    assert sorted(client.asked) == sorted((status, watch.LATEST) for status in watch.VERDICTS)
    assert len(page.jobs) == watch.LATEST
    finished = [verdict.finished_at for verdict in page.jobs if verdict.finished_at]
    assert finished == sorted(finished, reverse=True)
    assert len(finished) == watch.LATEST


async def test_watch_refreshes_then_returns_0(job: MakeJob) -> None:
    client, console = FakeApi(job), terminal()
    assert await watch.watch(client, interval_s=0, console=console, iterations=2) == 0

    assert client.refreshes == 2
    assert "sim-emulator-1" in console.export_text()


@pytest.mark.parametrize(
    ("failure", "shown"),
    [
        (ApiUnreachable(URL), f"API unreachable at {URL}, retrying"),
        (ApiError(503, "database unavailable"), "HTTP 503: database unavailable"),
        (ApiError(429, "too many requests"), "HTTP 429: too many requests"),
    ],
    ids=["unreachable", "server-error", "rate-limited"],
)
async def test_watch_shows_an_outage_and_recovers(
    job: MakeJob, failure: Exception, shown: str
) -> None:
    client, console = FakeApi(job, [None, failure]), terminal()
    assert await watch.watch(client, interval_s=0, console=console, iterations=3) == 0

    text = console.export_text()
    assert shown in text
    assert "last update" in text
    assert text.rindex("pending jobs") > text.index(shown), "the next refresh shows data again"


async def test_watch_stops_on_a_rejected_request(job: MakeJob) -> None:
    client = FakeApi(job, [ApiError(401, "missing or bad token")])
    with pytest.raises(ApiError, match="bad token"):
        await watch.watch(client, interval_s=0, console=terminal(), iterations=3)
    assert client.refreshes == 1


async def test_ctrl_c_ends_the_watch_with_0(job: MakeJob) -> None:
    client = FakeApi(job)
    task = asyncio.create_task(watch.watch(client, interval_s=0.01, console=terminal()))
    await client.second_refresh.wait()
    task.cancel()  # what asyncio.run does with the main task on Ctrl-C

    assert await task == 0
    assert not task.cancelled()
