"""Commands that run qgjob itself: `serve`, `project`, `agent` and `up` (everything,
on the embedded default). They only compose each package's `app.run()`."""

from __future__ import annotations

import asyncio
import enum
import shlex
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from agent import app as agent_app
from agent.runners import Runner
from agent.runners.appwright import AppwrightConfig, AppwrightRunner
from agent.runners.command import CommandConfig, CommandRunner
from agent.runners.simulated import SimulatedConfig
from agent.worker import INSTALL_CACHE_SIZE, AgentConfig
from cli import local_stack
from cli.main import app, fail
from infra import bands, embedded, nats_auth, settings
from infra import events as ev
from infra import logging as qlogging
from orchestrator import app as orchestrator_app
from projections import app as projections_app

Port = Annotated[
    int | None,
    typer.Option(
        "--port",
        envvar="QG_API_PORT",
        show_default=False,
        help="HTTP port of the API (default 8420).",
    ),
]
Targets = Annotated[
    list[ev.Target],
    typer.Option("--target", help="Target this agent serves; repeat for several."),
]


def _settings(port: int | None = None) -> settings.Settings:
    config = settings.from_env()
    if port is not None:
        config = msgspec.structs.replace(config, api_port=port, api_url=f"http://127.0.0.1:{port}")
    return config


def _external_servers(config: settings.Settings, *, for_agents: bool = False) -> embedded.Servers:
    """The servers QG_NATS_URL and QG_DATABASE_URL name. Agents connect at
    QG_AGENT_NATS_URL if set; the service (or the agents) connect with the embedded
    server's own users when the URL names a `qgjob up` server on this machine without
    credentials. An agent process gets no service credentials."""
    if config.nats_url is None or (not for_agents and config.database_url is None):
        fail(
            "set QG_NATS_URL and QG_DATABASE_URL to run one component on its own; "
            "`qgjob up` starts everything on embedded servers"
        )
    store = config.home / embedded.NATS_DIR
    if for_agents:
        agent_url = config.agent_nats_url or nats_auth.local_url(
            store, config.nats_url, nats_auth.LOCAL_AGENT_USER
        )
        return embedded.Servers(nats_url=agent_url, database_url="", agent_nats_url=agent_url)
    return embedded.Servers(
        nats_url=nats_auth.local_url(store, config.nats_url, nats_auth.SERVICE_USER),
        database_url=config.database_url or "",
    )


def _until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)`; SIGINT or SIGTERM sets `stop`, and the process exits cleanly. A
    component that crashes ends the process with one line (details in the logs)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await main(stop)

    try:
        asyncio.run(runner())
    except Exception as exc:  # noqa: BLE001 - the command boundary: one line, not a traceback
        fail(f"stopped: {_first_cause(exc)}")


def _first_cause(exc: BaseException) -> str:
    """The innermost error of a crashed TaskGroup, as `Type: message`."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def _require_free_port(config: settings.Settings) -> None:
    with socket.socket() as sock:
        # As the server itself binds: a predecessor's TIME_WAIT connections (after a
        # kill -9) must not make a free port look taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.api_host, config.api_port))
        except OSError:
            fail(
                f"port {config.api_port} is in use (another `qgjob up`?); "
                "choose one with --port or QG_API_PORT"
            )


def _simulated_agents(
    targets: list[ev.Target], slots: int, runner: SimulatedConfig, prefix: str
) -> list[tuple[AgentConfig, Runner]]:
    config = settings.from_env()
    return [
        (
            AgentConfig(
                agent_id=ev.AgentId(f"{prefix}-{slot + 1}"),
                targets=tuple(targets),
                max_attempts=config.max_attempts,
                backoff=config.backoff,
                ticket_ack_wait_s=config.ticket_ack_wait_s,
                heartbeat_ttl_s=config.agent_ttl_s,
            ),
            agent_app.simulated_runner(runner, slot),
        )
        for slot in range(slots)
    ]


@app.command()
def serve(port: Port = None) -> None:
    """Run the orchestrator (HTTP API, claim service) against QG_NATS_URL and QG_DATABASE_URL."""
    config = _settings(port)
    servers = _external_servers(config)
    _require_free_port(config)
    qlogging.configure(config.log_format)
    _until_signalled(lambda stop: orchestrator_app.run(config, servers, stop))


@app.command()
def project() -> None:
    """Run the grouping projector and the read-model projectors."""
    config = _settings()
    servers = _external_servers(config)
    qlogging.configure(config.log_format)
    _until_signalled(lambda stop: projections_app.run(config, servers, stop))


class RunnerKind(enum.StrEnum):
    """How an agent installs builds and runs tests."""

    SIMULATED = "simulated"
    COMMAND = "command"
    APPWRIGHT = "appwright"


_PLACEHOLDERS = "{org_id}, {app_version_id}, {target}"


def _command_config(
    kind: RunnerKind, install_cmd: str | None, test_cmd: str | None
) -> CommandConfig | None:
    """The command runner's templates (None for the other runners); exits 2 when they
    are missing, given to the wrong runner or name an unknown placeholder."""
    if kind is not RunnerKind.COMMAND:
        if install_cmd is not None or test_cmd is not None:
            fail("--install-cmd and --test-cmd need --runner command")
        return None
    if test_cmd is None:
        fail("--runner command needs --test-cmd")
    try:
        install = tuple(shlex.split(install_cmd or ""))
        return CommandConfig(install=install, test=tuple(shlex.split(test_cmd)))
    except ValueError as exc:
        fail(f"bad command template: {exc}")


def _appwright_config(
    kind: RunnerKind,
    targets: list[ev.Target],
    directory: Path | None,
    projects: list[str],
    build_source: str | None,
    build_dir: Path | None,
) -> AppwrightConfig | None:
    """The AppWright runner's configuration (None for the other runners); exits 2 when it
    is incomplete, given to the wrong runner, or leaves a served target without a project."""
    if kind is not RunnerKind.APPWRIGHT:
        if directory is not None or projects or build_source is not None or build_dir:
            fail("--appwright-dir, --project, --build-source, --build-dir need --runner appwright")
        return None
    if directory is None or build_source is None or not projects:
        fail("--runner appwright needs --appwright-dir, --build-source and --project TARGET=NAME")
    if not (directory / "appwright.config.ts").is_file():
        fail(f"no appwright.config.ts in --appwright-dir {directory}")
    mapping: dict[str, str] = {}
    for item in projects:
        target, equals, name = item.partition("=")
        if not equals or target in mapping:
            fail(f"--project takes TARGET=NAME once per target (emulator=android), not {item!r}")
        mapping[target] = name
    builds = build_dir or settings.from_env().home / "builds"
    try:
        config = AppwrightConfig(
            project_dir=str(directory.resolve()),
            projects=mapping,
            build_source=build_source,
            build_dir=str(builds.resolve()),
        )
    except ValueError as exc:
        fail(f"bad AppWright configuration: {exc}")
    unmapped = [t.value for t in targets if t.value not in mapping]
    if unmapped:
        fail(f"--target {', '.join(unmapped)} has no --project TARGET=NAME")
    return config


@app.command()
def agent(
    target: Targets,
    slots: Annotated[int, typer.Option(min=1, help="Device slots (agents) in this process.")] = 1,
    name: Annotated[str, typer.Option(help="Agent id prefix.")] = socket.gethostname(),
    runner: Annotated[
        RunnerKind,
        typer.Option(
            help="Simulated tests, real commands (--test-cmd) or AppWright (--appwright-dir)."
        ),
    ] = RunnerKind.SIMULATED,
    install_cmd: Annotated[
        str | None,
        typer.Option(
            help=f"Install command, run once per build and target; may name {_PLACEHOLDERS}."
        ),
    ] = None,
    test_cmd: Annotated[
        str | None,
        typer.Option(
            help="Test command, e.g. 'npx appwright test {test_path} --project {target}'; "
            f"may name {_PLACEHOLDERS}, {{test_path}}, {{job_id}}. Exit code 0 passes."
        ),
    ] = None,
    appwright_dir: Annotated[
        Path | None,
        typer.Option(help="AppWright project (appwright.config.ts, node_modules); tests run here."),
    ] = None,
    project: Annotated[
        list[str] | None,
        typer.Option(
            "--project",
            help="TARGET=NAME: the AppWright project that runs a target, e.g. emulator=android; "
            "repeat for each --target.",
        ),
    ] = None,
    build_source: Annotated[
        str | None,
        typer.Option(
            help="Where a build comes from: a path (relative to --appwright-dir) or an http(s) "
            "URL naming {app_version_id}, and maybe {org_id}, {target}."
        ),
    ] = None,
    build_dir: Annotated[
        Path | None,
        typer.Option(help="Where downloaded builds go (default: $QG_HOME/builds)."),
    ] = None,
    install_s: Annotated[float, typer.Option(min=0, help="Simulated install time.")] = 2.0,
    test_s: Annotated[float, typer.Option(min=0, help="Simulated test time.")] = 0.5,
    fail_rate: Annotated[float, typer.Option(min=0, max=1, help="Simulated failure rate.")] = 0.0,
    preempt_band: Annotated[
        int | None,
        typer.Option(
            min=2,
            max=5,
            help="Let tickets of this band or higher interrupt a lower band's batch between "
            "tests (2: any higher band does). By default only urgent work, jobs submitted "
            "at priority 5, does.",
        ),
    ] = None,
    install_cache: Annotated[
        int, typer.Option(min=1, help="Builds a device keeps installed (least recently used out).")
    ] = INSTALL_CACHE_SIZE,
) -> None:
    """Run agents serving the given targets, simulated, running real commands or AppWright
    tests (needs only QG_NATS_URL: where NATS authorizes its clients, with an agent
    user's credentials in it or in QG_AGENT_NATS_URL). Each templated argument stays one
    argument: no shell is involved."""
    command = _command_config(runner, install_cmd, test_cmd)
    appwright = _appwright_config(
        runner, target, appwright_dir, project or [], build_source, build_dir
    )
    config = _settings()
    servers = _external_servers(config, for_agents=True)
    qlogging.configure(config.log_format)
    simulated = SimulatedConfig(install_s=install_s, test_s=test_s, fail_rate=fail_rate)
    agents = [
        (
            msgspec.structs.replace(
                slot,
                preempt_band=preempt_band or bands.URGENT,
                install_cache_size=install_cache,
            ),
            runner,
        )
        for slot, runner in _simulated_agents(target, slots, simulated, name)
    ]
    # The same slots and agent ids, each running real tests instead.
    if command is not None:
        agents = [(slot, CommandRunner(command)) for slot, _ in agents]
    elif appwright is not None:
        agents = [(slot, AppwrightRunner(appwright)) for slot, _ in agents]
    _until_signalled(lambda stop: agent_app.run(servers, agents, stop))


@app.command()
def up(
    port: Port = None,
    agents: Annotated[int, typer.Option(min=1, help="Simulated agents per target.")] = 2,
    run_demo: Annotated[
        bool, typer.Option("--demo/--no-demo", help="Run the demo workload.")
    ] = True,
    exit_after_demo: Annotated[
        bool, typer.Option(help="Stop once the demo has finished instead of serving on.")
    ] = False,
) -> None:
    """Start everything: NATS and PostgreSQL (embedded unless QG_NATS_URL / QG_DATABASE_URL
    are set), the orchestrator, the projectors and simulated agents; then the demo."""
    config = _settings(port)
    _require_free_port(config)
    if not run_demo and exit_after_demo:
        fail("--exit-after-demo needs the demo")
    runner = SimulatedConfig(install_s=1.5, test_s=0.4, fail_rate=0.0)
    simulated = [
        *_simulated_agents([ev.Target.EMULATOR], agents, runner, "emulator"),
        *_simulated_agents([ev.Target.DEVICE], agents, runner, "device"),
    ]
    _until_signalled(
        lambda stop: local_stack.run(config, simulated, run_demo, exit_after_demo, stop)
    )
