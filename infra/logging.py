"""structlog set-up: pretty lines on a terminal, JSON lines elsewhere."""

from __future__ import annotations

import logging
import sys
from typing import Protocol, TextIO

import structlog


def configure(fmt: str = "auto", level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Configure structlog once for the process; `fmt` is `json`, `console` or `auto`."""
    out = stream or sys.stderr
    pretty = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )


class JobFacts(Protocol):
    """A job as a log line needs it (a JobState, a JobView, a claimed job)."""

    @property
    def job_id(self) -> str: ...
    @property
    def batch_id(self) -> str: ...
    @property
    def org_id(self) -> str: ...
    @property
    def agent_id(self) -> str | None: ...


def job_keys(job: JobFacts) -> dict[str, str | None]:
    """The stable keys every log line about a job carries (`stream_seq` is the caller's)."""
    return {
        "job_id": job.job_id,
        "batch_id": job.batch_id,
        "org_id": job.org_id,
        "agent_id": job.agent_id,
    }
