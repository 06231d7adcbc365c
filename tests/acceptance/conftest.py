"""`qgjob up` in a subprocess on free ports with its own QG_HOME, and a helper that runs
the `qgjob` CLI against it as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from infra import embedded

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

QGJOB = [sys.executable, "-m", "cli"]


@dataclass
class Up:
    """A running `qgjob up` and the environment that points the CLI at it."""

    process: subprocess.Popen[str]
    env: dict[str, str]
    home: Path

    def qgjob(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `qgjob ARGS` to completion, capturing its output."""
        return self.run_as(self.env, *args, timeout_s=timeout_s)

    def run_as(
        self, env: dict[str, str], *args: str, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `qgjob ARGS` with another environment (another token, say)."""
        return subprocess.run(
            [*QGJOB, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def stop(self) -> int:
        """Ctrl-C, as a user would; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(60)
        return self.process.returncode


def start_up(home: Path, *extra: str) -> Up:
    """Start `qgjob up --no-demo` on a free port and wait until its API answers."""
    port = embedded.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QG_")}
    env |= {"QG_HOME": str(home), "QG_API_URL": f"http://127.0.0.1:{port}", "COLUMNS": "200"}
    home.mkdir(parents=True, exist_ok=True)
    output = home / "up.out"
    with output.open("a") as out:
        process = subprocess.Popen(
            [*QGJOB, "up", "--no-demo", "--port", str(port), *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    up = Up(process=process, env=env, home=home)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"qgjob up exited: {output.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return up
        except OSError:
            time.sleep(0.1)
    up.stop()
    raise RuntimeError("qgjob up did not answer within 60 s")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = start_up(tmp_path_factory.mktemp("qghome"))
    try:
        yield running
    finally:
        running.stop()
