"""Prometheus metrics of one orchestrator: HTTP latency, recorded by a middleware, and
gauges refreshed from the read models and NATS at each scrape."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)

from infra import events as ev
from infra.bands import BANDS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from orchestrator import queries

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "unmatched"
"""The route label of requests no route matched, so that probing paths adds no series."""


class Metrics:
    """The metrics of one app, in a registry of its own (never the global one), so that
    apps sharing a process never clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "qgjob_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self._jobs = self._gauge("qgjob_jobs", "Jobs by status.", "status")
        self._pending = self._gauge(
            "qgjob_pending_jobs", "Queued jobs per target and priority band.", "target", "band"
        )
        self._oldest_wait = self._gauge(
            "qgjob_oldest_pending_wait_seconds",
            "How long the oldest queued job of each target has waited.",
            "target",
        )
        self._open_batches = self._gauge(
            "qgjob_batches_open", "Batches with queued, assigned or running jobs."
        )
        self._installs = self._gauge(
            "qgjob_installs", "Builds installed on devices, per target.", "target"
        )
        self._installs_saved = self._gauge(
            "qgjob_installs_saved",
            "Jobs that ran on a device which already had their build, per target.",
            "target",
        )
        self._agents = self._gauge("qgjob_agents", "Agents by status.", "status")
        self._retries = self._gauge("qgjob_job_retries", "Attempts beyond the first, all jobs.")
        self._rejected = self._gauge(
            "qgjob_events_rejected",
            "Messages on the event stream that were not events (parked in rejected_events).",
        )
        self._projector_lag = self._gauge(
            "qgjob_projector_lag",
            "Events stored but not yet applied by the slowest read-model projector.",
        )

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def render(self, stats: queries.Stats, projector_lag: int) -> bytes:
        """The exposition text, with every gauge set from `stats` and `projector_lag`."""
        per_target: dict[tuple[str, ...], float] = {(t.value,): 0 for t in ev.Target}
        pending: dict[tuple[str, ...], float] = {
            (t.value, str(band)): 0 for t in ev.Target for band in BANDS
        }
        oldest, installs, saved = dict(per_target), dict(per_target), dict(per_target)
        now = ev.utcnow()
        for band in stats.bands:
            pending[band.target.value, str(band.priority)] = band.pending
            if band.oldest_submitted_at is not None:
                waited = (now - band.oldest_submitted_at).total_seconds()
                oldest[band.target.value,] = max(oldest[band.target.value,], waited)
        for row in stats.installs:
            installs[row.target.value,] = row.installs
            saved[row.target.value,] = row.saved
        _replace(self._jobs, {(s.value,): stats.jobs.get(s, 0) for s in ev.JobStatus})
        _replace(self._pending, pending)
        _replace(self._oldest_wait, oldest)
        _replace(self._installs, installs)
        _replace(self._installs_saved, saved)
        _replace(self._agents, {(status,): count for status, count in stats.agents.items()})
        self._open_batches.set(stats.open_batches)
        self._retries.set(stats.retries)
        self._rejected.set(stats.rejected_events)
        self._projector_lag.set(projector_lag)
        return generate_latest(self.registry)


def _replace(gauge: Gauge, values: Mapping[tuple[str, ...], float]) -> None:
    """Set every sample of a labelled gauge; label sets missing from `values` disappear."""
    gauge.clear()
    for labels, value in values.items():
        gauge.labels(*labels).set(value)


METRICS = web.AppKey("metrics", Metrics)


@web.middleware
async def record_latency(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Time every answered request into the app's histogram, labelled by route template."""
    started = time.perf_counter()
    status: int | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        # A request cancelled by its client's disconnect has no status: not recorded.
        if status is not None:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED_ROUTE
            request.app[METRICS].latency.labels(request.method, route, str(status)).observe(
                time.perf_counter() - started
            )
