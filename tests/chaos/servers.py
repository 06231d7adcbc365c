"""nats-server and PostgreSQL that a chaos test can kill with SIGKILL and start again on
the same data and the same address, so that every client finds them where it left them.

nats-server: `infra.embedded.start_nats` on a fixed port over the same store directory.
PostgreSQL: the first start is pgserver's (`infra.embedded.start_postgres`: initdb, the
unprivileged `pgserver` user when running as root, a Unix socket); pgserver only ever
starts a server once per data directory in a process, so a restart runs the `pg_ctl`
shipped inside the pgserver wheel with the arguments pgserver uses, on the same data
directory and socket directory (hence the same URL), and PostgreSQL's crash recovery
replays its WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from infra import embedded

if TYPE_CHECKING:
    from pathlib import Path

GONE_TIMEOUT_S = 10.0
"""How long a SIGKILLed server's processes may take to disappear."""
PG_CTL_TIMEOUT_S = 60
PG_SYSTEM_USER = "pgserver"
"""pgserver runs PostgreSQL as this user when started by root."""


class ChaosServerError(Exception):
    """A server could not be killed or started again."""


def _alive(pid: int) -> bool:
    """Whether process `pid` exists. A zombie still counts: PostgreSQL refuses to start
    while the PID in its lock file answers `kill(pid, 0)`, which a zombie does until its
    new parent (init) reaps it."""
    return os.path.exists(f"/proc/{pid}")


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except FileNotFoundError:
        return []


async def _until_gone(pids: list[int], what: str) -> None:
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise ChaosServerError(f"{what} still running {GONE_TIMEOUT_S} s after SIGKILL")
        await asyncio.sleep(0.02)


@dataclass
class RestartableNats:
    """A JetStream nats-server on a fixed loopback port over `store_dir`."""

    store_dir: Path
    port: int = field(default_factory=embedded.free_port)
    server: embedded.NatsServer | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start (or start again) and wait until it accepts connections."""
        self.server = await asyncio.to_thread(embedded.start_nats, self.store_dir, self.port)

    async def kill(self) -> None:
        """SIGKILL: no flush of the file store, no goodbye to the clients."""
        if self.server is None:
            return
        self.server.process.kill()
        await asyncio.to_thread(self.server.process.wait)
        self.server = None

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None


@dataclass
class RestartablePostgres:
    """A PostgreSQL server (listening on a Unix socket only) over `data_dir`."""

    data_dir: Path
    first: embedded.Postgres | None = None
    socket_dir: str = ""

    @property
    def url(self) -> str:
        """The `postgres` database's URL, the same across restarts."""
        return f"postgresql://postgres:@/postgres?host={self.socket_dir}"

    def _postmaster_pid(self) -> int | None:
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    async def start(self) -> None:
        """The first start: pgserver initialises the data directory and starts it."""
        self.first = await asyncio.to_thread(embedded.start_postgres, self.data_dir)
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        self.socket_dir = lines[4].strip()  # postmaster.pid line 5: the socket directory
        if not self.socket_dir:
            raise ChaosServerError("PostgreSQL listens on no Unix socket")

    async def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a machine crash would."""
        pid = self._postmaster_pid()
        if pid is None or not _alive(pid):
            raise ChaosServerError(f"no running PostgreSQL in {self.data_dir}")
        # Frozen first, so that it forks no backend between the listing and the kill.
        os.kill(pid, signal.SIGSTOP)
        pids = [pid, *_children(pid)]
        for victim in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        await _until_gone(pids, "PostgreSQL")

    def _pg_ctl(self, *args: str) -> None:
        """Run the wheel's `pg_ctl` on this data directory as the user pgserver runs
        PostgreSQL as. Its output goes to a file: PostgreSQL inherits pg_ctl's streams,
        and a pipe would stay open as long as the server runs."""
        from pgserver._commands import POSTGRES_BIN_PATH

        argv = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir.resolve()), *args]
        user = PG_SYSTEM_USER if os.geteuid() == 0 else None
        with tempfile.TemporaryFile("w+") as output:
            status = subprocess.run(
                argv, stdout=output, stderr=subprocess.STDOUT, user=user, timeout=PG_CTL_TIMEOUT_S
            ).returncode
            if status != 0:
                output.seek(0)
                raise ChaosServerError(f"pg_ctl {' '.join(args)} exited {status}: {output.read()}")

    async def restart(self) -> None:
        """Start again after a kill: crash recovery, same socket, same URL."""
        await asyncio.to_thread(
            self._pg_ctl,
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.data_dir.resolve() / "log"),
            "start",
        )

    async def stop(self) -> None:
        """Stop whichever server runs now: pgserver's own, or the one `restart` began."""
        pid = self._postmaster_pid()
        first, self.first = self.first, None
        if first is not None and pid == first.pid:
            await asyncio.to_thread(first.stop)
            return
        if pid is not None and _alive(pid):
            await asyncio.to_thread(self._pg_ctl, "-w", "-m", "fast", "stop")
        if first is not None:
            # Its process is gone: this only drops pgserver's bookkeeping of the handle.
            await asyncio.to_thread(first.stop)
