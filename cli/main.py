"""The `qgjob` command line: submit test jobs, follow them and inspect the queues.

Client commands are registered here; `cli/stack.py` adds the commands that run the
stack itself (`serve`, `project`, `agent`, `up`) with `from cli.main import app`.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import nats.errors
import typer
from rich.console import Console, RenderableType

from cli import render, reports, waiting, watch
from cli.client import ApiClient, CliError
from infra import api, embedded, nats_auth, settings, tokens
from infra import nats as qnats
from infra.eventlog import EventLog
from infra.events import JobStatus, Role, Target

E = TypeVar("E", bound=enum.StrEnum)
S = TypeVar("S", bound=msgspec.Struct)
Work = Callable[[ApiClient], Coroutine[Any, Any, int]]

app = typer.Typer(
    name="qgjob",
    help="Run AppWright test jobs, grouped by app build so that each device installs once.",
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
jobs_app = typer.Typer(help="List and cancel jobs.", no_args_is_help=True)
queue_app = typer.Typer(help="What is waiting to run.", no_args_is_help=True)
agents_app = typer.Typer(help="The agents that run tests.", no_args_is_help=True)
batches_app = typer.Typer(help="Jobs grouped by org, app build and target.", no_args_is_help=True)
ops_app = typer.Typer(
    help="Operators: rebuild and check the read models, manage API tokens.", no_args_is_help=True
)
tokens_app = typer.Typer(help="API tokens of orgs and admins.", no_args_is_help=True)
ops_app.add_typer(tokens_app, name="tokens")
app.add_typer(jobs_app, name="jobs")
app.add_typer(queue_app, name="queue")
app.add_typer(agents_app, name="agents")
app.add_typer(batches_app, name="batches")
app.add_typer(ops_app, name="ops")

ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        envvar="QG_API_URL",
        show_default=False,
        help="Base URL of the qgjob API (default: http://127.0.0.1:8420, or port $QG_API_PORT).",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="QG_TOKEN",
        show_default=False,
        help="Bearer token for the API (default: the admin token `qgjob up` keeps in QG_HOME).",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
WaitTimeout = Annotated[
    float, typer.Option("--timeout", help="Give up waiting after this many seconds (exit 2).")
]
PollInterval = Annotated[float, typer.Option(help="Seconds between two polls of a job.")]
JunitReport = Annotated[
    Path | None,
    typer.Option(
        "--junit",
        metavar="FILE",
        help="Write a JUnit XML report (one testcase per job) when the wait ends.",
    ),
]
StepSummary = Annotated[
    bool,
    typer.Option(
        "--summary",
        help="Append a Markdown table of the verdicts to $GITHUB_STEP_SUMMARY, when set.",
    ),
]

_SPEC_DEFAULTS = {field.name: field.default for field in msgspec.structs.fields(api.JobSpec)}
_WAIT_TIMEOUT_S = 300.0
_POLL_INTERVAL_S = 0.5


def fail(message: str) -> NoReturn:
    """Print `qgjob: error: <message>` as one line on stderr and exit 2."""
    typer.echo(f"qgjob: error: {' '.join(message.split())}", err=True)
    raise typer.Exit(waiting.EXIT_ERROR)


def run(api_url: str | None, token: str | None, work: Work) -> None:
    """Run `work` with an API client and exit with its code; a CliError exits 2 in one line."""
    try:
        code = asyncio.run(_with_client(api_url, token, work))
    except CliError as exc:
        fail(str(exc))
    raise typer.Exit(code)


async def _with_client(api_url: str | None, token: str | None, work: Work) -> int:
    async with ApiClient(api_url or _default_api_url(), token or _local_token()) as client:
        return await work(client)


def _local_token() -> str | None:
    """The admin token `qgjob up` left in QG_HOME, when no token was given."""
    try:
        path = settings.from_env().home / tokens.LOCAL_ADMIN_FILE
        return path.read_text().strip() if path.is_file() else None
    except (ValueError, OSError):
        return None


def _default_api_url() -> str:
    try:
        return settings.from_env().api_url
    except ValueError as exc:
        raise CliError(f"bad QG_* environment variable: {exc}") from exc


def _choice(kind: type[E], option: str, value: str) -> E:
    """The member of `kind` named `value`, or a CliError naming the option and the choices."""
    try:
        return kind(value.strip().lower())
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise CliError(f"{option} must be one of {choices}, not {value!r}") from None


def _priority(value: str) -> int:
    try:
        return api.parse_priority(value)
    except ValueError as exc:
        raise CliError(f"--priority: {exc}") from None


@app.command()
def submit(
    org_id: Annotated[str, typer.Option(help="Organisation that owns the app.")],
    app_version_id: Annotated[str, typer.Option(help="The app build to test.")],
    tests: Annotated[list[str], typer.Option("--test", help="Test file; repeat for several.")],
    target: Annotated[
        str, typer.Option(metavar="emulator|device|browserstack", help="Where the tests run.")
    ],
    priority: Annotated[
        str, typer.Option(help="1-5, or low, normal/medium, high, urgent/critical.")
    ] = "normal",
    retries: Annotated[
        int, typer.Option(help="Extra runs allowed for a failing (flaky) test.")
    ] = _SPEC_DEFAULTS["retries"],
    timeout_s: Annotated[
        float, typer.Option(help="Time limit of each test run, in seconds.")
    ] = _SPEC_DEFAULTS["timeout_s"],
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Submitting again with this key returns the same job(s); KEY:N per test."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the jobs; see `wait`.")] = False,
    timeout: WaitTimeout = _WAIT_TIMEOUT_S,
    junit: JunitReport = None,
    summary: StepSummary = False,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Submit one job per --test and print the job ids, one per line.

    With --wait, progress and the summary go to stderr, and the exit codes are those of
    `qgjob wait`.
    """
    if (junit or summary) and not wait:
        fail("--junit and --summary need --wait")

    async def work(client: ApiClient) -> int:
        template = api.JobSpec(
            org_id=org_id,
            app_version_id=app_version_id,
            test_path=tests[0],
            target=_choice(Target, "--target", target),
            priority=_priority(priority),
            retries=retries,
            timeout_s=timeout_s,
        )
        keys = _idempotency_keys(idempotency_key, len(tests))
        specs = [
            msgspec.structs.replace(template, test_path=test, idempotency_key=key)
            for test, key in zip(tests, keys, strict=True)
        ]
        single = len(specs) == 1
        jobs = [await client.submit(specs[0])] if single else await client.submit_many(specs)
        if not json_output:
            for job in jobs:
                typer.echo(job.job_id)
        if wait:
            ids = [job.job_id for job in jobs]
            return await _wait(
                client,
                ids,
                wait_s=timeout,
                poll_s=_POLL_INTERVAL_S,
                json_output=json_output,
                single=single,
                to=render.err,
                report=reports.Reports(junit=junit, summary=summary),
            )
        if json_output:
            render.print_json(jobs[0] if single else jobs)
        return waiting.EXIT_PASSED

    run(api_url, token, work)


def _idempotency_keys(key: str | None, count: int) -> list[str]:
    """The key itself for one test; `KEY:0`, `KEY:1`, ... for several. Without a key, one
    made up for this run, so that the client may safely retry a submit that met a
    transient failure without ever making a job twice."""
    key = key or f"cli-{uuid.uuid4().hex}"
    if count == 1:
        return [key]
    return [f"{key}:{index}" for index in range(count)]


async def _wait(
    client: ApiClient,
    job_ids: list[str],
    *,
    wait_s: float,
    poll_s: float,
    json_output: bool,
    single: bool = False,
    to: Console = render.out,
    report: reports.Reports | None = None,
) -> int:
    """Wait for the jobs, print their outcome and return the exit code of `wait`.

    `single` prints a JSON object rather than a list; `to` is where the summary table goes;
    `report` the files written when the wait ends, timed out or not.
    """
    with render.Progress() as progress:
        outcome = await waiting.wait_for(
            client,
            job_ids,
            timeout_s=wait_s,
            poll_s=poll_s,
            on_progress=lambda jobs: progress.update(render.progress_line(jobs)),
        )
    if json_output:
        render.print_json(outcome.jobs[0] if single and outcome.jobs else outcome.jobs)
    elif outcome.jobs:
        to.print(render.summary_table(outcome.jobs))
    if report is not None:
        await report.write(client, outcome.jobs)
    if outcome.unfinished:
        raise CliError(f"timed out after {wait_s:g} s waiting for {outcome.unfinished} job(s)")
    return waiting.exit_code(outcome.jobs)


@app.command()
def wait(
    job_ids: Annotated[list[str], typer.Argument(metavar="JOB_ID", help="Jobs to wait for.")],
    timeout: WaitTimeout = _WAIT_TIMEOUT_S,
    poll_interval: PollInterval = _POLL_INTERVAL_S,
    junit: JunitReport = None,
    summary: StepSummary = False,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Wait until every job has finished, then show how each ended.

    Exit codes: 0 every job passed; 1 a test failed; 2 a job was cancelled or dead (no test
    verdict), the wait timed out, or an error occurred (such as an unknown job id).
    """
    if poll_interval <= 0:
        fail(f"--poll-interval must be more than 0 seconds, not {poll_interval:g}")

    async def work(client: ApiClient) -> int:
        return await _wait(
            client,
            job_ids,
            wait_s=timeout,
            poll_s=poll_interval,
            json_output=json_output,
            report=reports.Reports(junit=junit, summary=summary),
        )

    run(api_url, token, work)


@app.command()
def status(
    job_id: Annotated[str | None, typer.Argument(help="The job to show.")] = None,
    job_id_option: Annotated[
        str | None, typer.Option("--job-id", help="The job to show (same as the argument).")
    ] = None,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Show one job: its state, where it ran, its timings and its event history."""
    if job_id and job_id_option and job_id != job_id_option:
        fail("give the job id once, as an argument or with --job-id")
    wanted = job_id or job_id_option
    if not wanted:
        fail("which job? give a job id: qgjob status JOB_ID")
    _show(api_url, token, lambda client: client.job(wanted), render.job_detail, json_output)


@jobs_app.command("list")
def jobs_list(
    org_id: Annotated[str | None, typer.Option(help="Only this organisation's jobs.")] = None,
    app_version_id: Annotated[str | None, typer.Option(help="Only jobs of this build.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only jobs in this state (queued, running, passed...).")
    ] = None,
    target: Annotated[
        str | None, typer.Option(metavar="emulator|device|browserstack", help="Only this target.")
    ] = None,
    batch_id: Annotated[str | None, typer.Option(help="Only jobs of this batch.")] = None,
    limit: Annotated[int, typer.Option(help="Jobs per page (at most 500).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue from a previous page.")] = None,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """List jobs, newest first."""

    async def fetch(client: ApiClient) -> api.JobPage:
        return await client.jobs(
            org_id=org_id,
            app_version_id=app_version_id,
            status=None if status is None else _choice(JobStatus, "--status", status),
            target=None if target is None else _choice(Target, "--target", target),
            batch_id=batch_id,
            limit=limit,
            cursor=cursor,
        )

    _show(api_url, token, fetch, render.jobs_view, json_output)


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="The job whose test output to print.")],
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Stream the output while the test runs, to its end."),
    ] = False,
    attempt: Annotated[
        int | None, typer.Option(min=1, help="Which attempt (default: the latest).")
    ] = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Print a job's test output (what the test wrote to stdout and stderr)."""

    async def work(client: ApiClient) -> int:
        if follow:
            async for chunk in client.follow_logs(job_id, attempt):
                _write_raw(chunk)
        else:
            _write_raw(await client.logs(job_id, attempt))
        return 0

    run(api_url, token, work)


def _write_raw(data: bytes) -> None:
    """Test output as it came, bytes and all, flushed so a follower sees it at once."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str | None, typer.Argument(help="The job to cancel.")] = None,
    batch_id: Annotated[
        str | None, typer.Option(help="Cancel every unfinished job of this batch.")
    ] = None,
    app_version_id: Annotated[
        str | None,
        typer.Option(help="Cancel every unfinished job of this app build (with --org-id)."),
    ] = None,
    org_id: Annotated[str | None, typer.Option(help="The org of --app-version-id.")] = None,
    target: Annotated[
        str | None, typer.Option(help="With --app-version-id: only jobs on this target.")
    ] = None,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Cancel a job that has not finished yet, or every unfinished job of a batch or of
    an app build. Queued jobs leave their batch at once; running tests are stopped."""
    many = batch_id is not None or app_version_id is not None
    if (job_id is None) == (not many):
        fail("give a job id, or --batch-id, or --org-id with --app-version-id")
    if job_id is not None:
        cancel_one = lambda client: client.cancel(job_id)  # noqa: E731
        _show(api_url, token, cancel_one, render.job_detail, json_output)
        return
    if app_version_id is not None and org_id is None:
        fail("--app-version-id needs --org-id")
    match = api.CancelMany(
        batch_id=batch_id,
        org_id=org_id,
        app_version_id=app_version_id,
        target=None if target is None else _choice(Target, "--target", target),
    )
    _show(api_url, token, lambda client: client.cancel_many(match), render.cancelled, json_output)


@queue_app.command("status")
def queue_status(json_output: Json = False, api_url: ApiUrl = None, token: Token = None) -> None:
    """Pending jobs per target and priority, the open batches, and how many jobs run."""
    _show(api_url, token, ApiClient.queues, render.queue_view, json_output)


@agents_app.command("list")
def agents_list(json_output: Json = False, api_url: ApiUrl = None, token: Token = None) -> None:
    """Every registered agent and what it is doing."""
    _show(api_url, token, ApiClient.agents, render.agents_view, json_output)


@batches_app.command("list")
def batches_list(
    limit: Annotated[int, typer.Option(help="How many batches, most recently active first.")] = 50,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Batches: the jobs of one org, app build and target, installed once per device."""
    _show(api_url, token, lambda client: client.batches(limit), render.batches_view, json_output)


@app.command()
def health(json_output: Json = False, api_url: ApiUrl = None, token: Token = None) -> None:
    """Check the API and its dependencies: exit 0 when ok, 1 when degraded, 2 if unreachable."""

    async def work(client: ApiClient) -> int:
        report = await client.health()
        render.show(report, render.health_view, as_json=json_output)
        return 0 if report.status == "ok" else 1

    run(api_url, token, work)


Projection = Annotated[
    str | None,
    typer.Option(help="One read model: jobs, batches or agents (default: all)."),
]


def _read_model(name: str | None) -> api.ReadModel | None:
    for model in api.READ_MODELS:
        if name == model:
            return model
    if name is not None:
        fail(f"--projection must be one of {', '.join(api.READ_MODELS)}, not {name!r}")
    return None


@ops_app.command("replay")
def ops_replay(
    projection: Projection = None,
    until: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Rebuild as of this stream sequence into a separate schema to inspect, "
            "leaving the live read models alone.",
        ),
    ] = None,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Rebuild read models from the event stream and swap them in atomically; the API
    keeps answering from the old tables until the swap."""
    body = api.OpsBody(projection=_read_model(projection), until=until)
    _show(api_url, token, lambda c: c.ops("replay", body), render.ops_view, json_output)


@ops_app.command("verify")
def ops_verify(
    projection: Projection = None,
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Rebuild read models into scratch tables and compare them with the live ones:
    exit 0 when no row differs, 1 otherwise."""

    async def work(client: ApiClient) -> int:
        report = await client.ops("verify", api.OpsBody(projection=_read_model(projection)))
        render.show(report, render.ops_view, as_json=json_output)
        return 1 if any(p.differing for p in report.projections) else 0

    run(api_url, token, work)


@tokens_app.command("create")
def tokens_create(
    org_id: Annotated[
        str | None, typer.Option(help="The org the token acts for (not for --role admin).")
    ] = None,
    role: Annotated[
        str,
        typer.Option(
            metavar="submit|read|admin",
            help="submit: submit, read and cancel the org's jobs; read: only read; "
            "admin: everything, every org.",
        ),
    ] = "submit",
    name: Annotated[str, typer.Option(help="What the token is for, e.g. github-actions.")] = "",
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Create an API token and print it once: only its hash is kept (an admin token is
    needed)."""
    chosen = _choice(Role, "--role", role)
    if chosen is not Role.ADMIN and org_id is None:
        fail(f"a {chosen} token needs --org-id")
    spec = api.TokenCreate(org_id=org_id, role=chosen, name=name)

    async def work(client: ApiClient) -> int:
        created = await client.create_token(spec)
        if json_output:
            render.print_json(created)
        else:
            typer.echo(created.token)
            render.err.print(f"token {created.details.token_id}: shown once, keep it secret")
        return 0

    run(api_url, token, work)


@tokens_app.command("bootstrap")
def tokens_bootstrap(
    name: Annotated[str, typer.Option(help="What the token is for.")] = "bootstrap admin",
) -> None:
    """Create a deployment's first admin token straight on the event log, without the
    API (needs QG_NATS_URL: whoever reaches NATS runs the system anyway)."""
    config = settings.from_env()
    if config.nats_url is None:
        fail("set QG_NATS_URL to the deployment's NATS (qgjob up keeps its own admin token)")

    async def record(url: str) -> str:
        nc = await qnats.connect(url, name="qgjob-bootstrap")
        try:
            await qnats.declare_streams(nc.jetstream())
            return await tokens.new_admin(EventLog(nc), name)
        finally:
            await qnats.close(nc)

    # A `qgjob up` server on this machine is reached with its own service user.
    store = config.home / embedded.NATS_DIR
    url = nats_auth.local_url(store, config.nats_url, nats_auth.SERVICE_USER)
    try:
        typer.echo(asyncio.run(record(url)))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        fail(f"cannot record the token on NATS at {config.nats_url}: {exc}")


@tokens_app.command("list")
def tokens_list(json_output: Json = False, api_url: ApiUrl = None, token: Token = None) -> None:
    """Every API token (never the secrets), and whether it was revoked."""
    _show(api_url, token, ApiClient.tokens, render.tokens_view, json_output)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (see `ops tokens list`).")],
    json_output: Json = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Revoke a token: every later request with it answers 401."""
    revoke = lambda client: client.revoke_token(token_id)  # noqa: E731
    _show(api_url, token, revoke, render.tokens_view, json_output)


@queue_app.command("watch")
def queue_watch(
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between two refreshes.")
    ] = 2.0,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """A live view of the pending bands, open batches, agents and latest verdicts;
    Ctrl-C stops it."""

    async def work(client: ApiClient) -> int:
        return await watch.watch(client, interval_s=interval, console=render.out)

    run(api_url, token, work)


def _show(
    api_url: str | None,
    token: str | None,
    fetch: Callable[[ApiClient], Awaitable[S]],
    view: Callable[[S], RenderableType],
    json_output: bool,
) -> None:
    """Fetch one thing from the API and print it (the body of every read-only command)."""

    async def work(client: ApiClient) -> int:
        render.show(await fetch(client), view, as_json=json_output)
        return 0

    run(api_url, token, work)


def main() -> None:
    """Entry point of the `qgjob` script."""
    from cli import stack  # noqa: F401 - registers serve/project/agent/up on `app`

    app(prog_name="qgjob")
