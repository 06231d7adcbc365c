"""Running one runner command as a real process: in its own process group, its output
streamed (with secrets masked) and its end kept, the whole group stopped when it ends, times
out or is cancelled. Shared by the command and the AppWright runners."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from typing import TYPE_CHECKING

import msgspec

from agent.runners import RunnerError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from agent.runners import Output

REASON_CHARS = 300
"""How much of one line of output a reason keeps."""
MASK = b"***"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """`text` without ANSI colour and cursor sequences."""
    return _ANSI.sub("", text)


class Masker:
    """Replaces secret values in a stream of chunks with `***`, even when a value is split
    across two chunks: the last `len(longest secret) - 1` bytes are held back until the next
    chunk (or the end) shows whether they start a secret."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self._hold = max((len(s) for s in self._secrets), default=1) - 1
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """What of `chunk` (and the held-back bytes before it) can be passed on now."""
        data = self.mask(self._pending + chunk)
        cut = max(0, len(data) - self._hold)
        self._pending = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        """The held-back bytes, at the end of the stream."""
        data, self._pending = self._pending, b""
        return data

    def mask(self, data: bytes) -> bytes:
        """`data` with every whole secret replaced."""
        for secret in self._secrets:
            data = data.replace(secret, MASK)
        return data

    def mask_text(self, text: str) -> str:
        """`text` with every whole secret replaced."""
        return self.mask(text.encode()).decode(errors="replace")


class Finished(msgspec.Struct, frozen=True):
    """How a command ended and what it printed last."""

    returncode: int
    output: str
    """The end of the merged stdout and stderr, with a note of what was dropped before it."""

    def tail(self, lines: int) -> list[str]:
        """The last `lines` non-empty lines, without colours, each cut to REASON_CHARS."""
        kept = [plain(line).strip() for line in self.output.splitlines()]
        return [line[:REASON_CHARS] for line in kept if line][-lines:]

    def describe(self, lines: int = 1) -> str:
        """`exit code 3: <last line>` or `killed by SIGKILL: <last line>`."""
        status = f"exit code {self.returncode}"
        if self.returncode < 0:
            try:
                status = f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:  # a real-time signal has no name
                status = f"killed by signal {-self.returncode}"
        tail = " | ".join(self.tail(lines))
        return f"{status}: {tail}" if tail else status


async def execute(
    argv: Sequence[str],
    *,
    cwd: str | None,
    env: Mapping[str, str],
    kill_grace_s: float,
    output_limit_bytes: int,
    output: Output | None = None,
    secrets: Iterable[str] = (),
) -> Finished:
    """Run `argv` in a new process group to its end, streaming what it prints to `output`
    with `secrets` masked; on cancellation stop the whole group before re-raising. Any
    process the command left behind is stopped too."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        raise RunnerError(f"cannot start {argv[0]!r}: {exc}") from exc
    assert process.stdout is not None
    reading = asyncio.create_task(
        _read(process.stdout, output, Masker(secrets), output_limit_bytes)
    )
    try:
        returncode = await process.wait()
    except BaseException:
        reading.cancel()
        raise
    finally:
        # After a normal exit this ends stragglers that would hold the output pipe open.
        await _stop_group(process, kill_grace_s)
    return Finished(returncode, await reading)


async def _read(
    stream: asyncio.StreamReader, output: Output | None, masker: Masker, limit: int
) -> str:
    kept = bytearray()
    dropped = 0
    while True:
        raw = await stream.read(1 << 16)
        chunk = masker.feed(raw) if raw else masker.flush()
        if chunk:
            if output is not None:
                await output.write(chunk)
            kept += chunk
            if len(kept) > limit:
                dropped += len(kept) - limit
                del kept[:-limit]
        if not raw:
            break
    note = f"[{dropped} bytes of output dropped]\n" if dropped else ""
    return note + kept.decode(errors="replace")


async def _stop_group(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM the group, give its leader `grace_s` to exit, then SIGKILL the group and
    reap the leader. The kernel does not reuse a live group's id."""
    try:
        _signal_group(process.pid, signal.SIGTERM)
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), grace_s)
    finally:
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
