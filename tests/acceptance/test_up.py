"""`qgjob up` itself: Ctrl-C stops everything cleanly, and a second run keeps the data."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from infra import embedded
from tests.acceptance.conftest import QGJOB, start_up


def _server_pids(home: Path) -> list[int]:
    """PIDs of servers whose command line names this QG_HOME (ours, nobody else's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(home).encode() in cmdline and b"cli" not in cmdline:
                pids.append(int(proc.name))
    return pids


def test_ctrl_c_stops_everything_and_a_second_run_keeps_the_jobs(tmp_path: Path) -> None:
    first = start_up(tmp_path / "home")
    submitted = first.qgjob(
        "submit",
        "--org-id=acme",
        "--app-version-id=v9",
        "--test=tests/a.spec.js",
        "--target=device",
        "--wait",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert _server_pids(first.home), "nats-server and PostgreSQL run under QG_HOME"
    assert first.stop() == 0
    assert not _server_pids(first.home), "Ctrl-C stopped the servers too"

    second = start_up(tmp_path / "home")
    try:
        shown = second.qgjob("status", job_id, "--json")
        assert shown.returncode == 0, shown.stderr
        assert '"passed"' in shown.stdout
    finally:
        assert second.stop() == 0


def test_the_demo_groups_jobs_and_installs_each_build_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QG_")}
    env |= {"QG_HOME": str(tmp_path / "home"), "QG_API_PORT": str(embedded.free_port())}
    result = subprocess.run(
        [*QGJOB, "up", "--exit-after-demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24 jobs ran in 6 batches with 6 installs" in result.stdout
    assert "qgjob stopped." in result.stdout
    assert not _server_pids(tmp_path / "home")


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QG_")}
        result = subprocess.run(
            [*QGJOB, "up", "--no-demo", "--port", str(port)],
            env={**env, "QG_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"qgjob: error: port {port} is in use (another `qgjob up`?); "
        "choose one with --port or QG_API_PORT"
    )
