"""`qgjob up` itself: Ctrl-C stops everything cleanly, and a second run keeps the data."""

from __future__ import annotations

from pathlib import Path

from tests.acceptance.conftest import start_up


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
