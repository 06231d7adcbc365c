"""An async HTTP client for the orchestrator API that speaks in `infra.api` Structs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from infra import api, rpc
from infra.events import JobStatus, Target

T = TypeVar("T")

REQUEST_TIMEOUT_S = 30.0
_UNBOUNDED = aiohttp.ClientTimeout(total=None, sock_read=None)
"""For answers that take as long as they take: a followed log, a replay."""


class CliError(Exception):
    """The command could not do its work; the message says why, in one line."""


class ApiUnreachable(CliError):
    """Nothing answered at the API URL (connection refused, reset or timed out)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(
            f"cannot reach the qgjob API at {base_url} (is `qgjob up` running? set QG_API_URL)"
        )
        self.base_url = base_url


class ApiError(CliError):
    """The API answered with an error status and an `ErrorBody`."""

    def __init__(
        self, status: int, error: str, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        message = error if field is None or field in error else f"{field}: {error}"
        super().__init__(message)
        self.status = status
        self.error = error
        self.field = field
        self.retry_after_s = retry_after_s
        """From a 429 or 503 answer's `Retry-After`."""


RETRIES = 4
"""Extra tries of a request that met a transient failure, when repeating it is safe."""
_TRANSIENT = frozenset({429, 502, 503, 504})


def _transient_delay(exc: CliError, attempt: int) -> float | None:
    """How long to wait before trying again after `exc`; None when it is not transient."""
    if isinstance(exc, ApiError):
        if exc.status not in _TRANSIENT:
            return None
        if exc.retry_after_s is not None:
            return exc.retry_after_s
    elif not isinstance(exc, ApiUnreachable):
        return None
    return float(min(5.0, 0.5 * 2**attempt))


class ApiClient:
    """The orchestrator's HTTP API; use as `async with ApiClient(url, token) as api`."""

    def __init__(
        self, base_url: str, token: str | None = None, *, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise CliError(f"the API URL must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def submit(self, spec: api.JobSpec) -> api.JobView:
        """Submit one job (201 when new, 200 for a known idempotency key); retried after
        a transient failure only when it has an idempotency key."""
        keyed = spec.idempotency_key is not None
        return await self._request("POST", "/jobs", api.JobView, body=spec, retry=keyed)

    async def submit_many(self, specs: list[api.JobSpec]) -> list[api.JobView]:
        """Submit several jobs, in as many requests as the server's size limit needs."""
        views: list[api.JobView] = []
        for start in range(0, len(specs), api.MAX_JOBS_PER_REQUEST):
            chunk = specs[start : start + api.MAX_JOBS_PER_REQUEST]
            body = api.BulkSubmit(jobs=chunk)
            keyed = all(spec.idempotency_key is not None for spec in chunk)
            answer = await self._request(
                "POST", "/jobs", api.SubmitResponse, body=body, retry=keyed
            )
            views += answer.jobs
        return views

    async def job(self, job_id: str) -> api.JobView:
        """One job, with its event history (strongly consistent)."""
        return await self._request("GET", _job_path(job_id), api.JobView)

    async def cancel(self, job_id: str) -> api.JobView:
        """Cancel a job that has not finished."""
        return await self._request("DELETE", _job_path(job_id), api.JobView)

    async def cancel_many(self, match: api.CancelMany) -> api.CancelResult:
        """Cancel every unfinished job of a batch or an app version."""
        return await self._request("POST", "/jobs:cancel", api.CancelResult, body=match)

    async def jobs(
        self,
        *,
        org_id: str | None = None,
        app_version_id: str | None = None,
        status: JobStatus | None = None,
        target: Target | None = None,
        batch_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> api.JobPage:
        """One page of the jobs that match every given filter, newest first."""
        filters = {
            "org_id": org_id,
            "app_version_id": app_version_id,
            "status": status,
            "target": target,
            "batch_id": batch_id,
            "limit": limit,
            "cursor": cursor,
        }
        params = {name: str(value) for name, value in filters.items() if value is not None}
        return await self._request("GET", "/jobs", api.JobPage, params=params)

    async def batches(self, limit: int) -> api.BatchPage:
        """The most recently active batches."""
        return await self._request("GET", "/batches", api.BatchPage, params={"limit": str(limit)})

    async def queues(self) -> api.QueueView:
        """Pending jobs per target and priority band, and the open batches."""
        return await self._request("GET", "/queues", api.QueueView)

    async def agents(self) -> api.AgentPage:
        """Every registered agent."""
        return await self._request("GET", "/agents", api.AgentPage)

    async def health(self) -> api.Health:
        """The orchestrator's view of its dependencies (answered with 503 when degraded)."""
        return await self._request("GET", "/health", api.Health, accept=frozenset({503}))

    async def logs(self, job_id: str, attempt: int | None = None) -> bytes:
        """An attempt's test output (default: the latest attempt), as far as it goes now."""
        async with self._open("GET", _logs_path(job_id), params=_attempt(attempt)) as response:
            return await response.read()

    async def follow_logs(self, job_id: str, attempt: int | None = None) -> AsyncIterator[bytes]:
        """An attempt's test output as it is produced, until the attempt ends."""
        params = {**_attempt(attempt), "follow": "true"}
        path = _logs_path(job_id)
        async with self._open("GET", path, params=params, unbounded=True) as response:
            async for chunk in response.content.iter_any():
                yield chunk

    async def create_token(self, spec: api.TokenCreate) -> api.TokenCreated:
        """A new API token (shown once)."""
        return await self._request("POST", "/tokens", api.TokenCreated, body=spec)

    async def tokens(self) -> api.TokenPage:
        """Every API token, without secrets."""
        return await self._request("GET", "/tokens", api.TokenPage)

    async def revoke_token(self, token_id: str) -> api.TokenView:
        """Revoke a token: every later request with it answers 401."""
        return await self._request("DELETE", f"/tokens/{quote(token_id, safe='')}", api.TokenView)

    async def ops(self, action: str, body: api.OpsBody) -> rpc.OpsResponse:
        """Replay or verify read models (`action` is `replay` or `verify`); waits as long
        as the rebuild takes."""
        path = f"/ops/{action}"
        return await self._request("POST", path, rpc.OpsResponse, body=body, unbounded=True)

    async def _request(
        self,
        method: str,
        path: str,
        answer: type[T],
        *,
        body: msgspec.Struct | None = None,
        params: dict[str, str] | None = None,
        accept: frozenset[int] = frozenset(),
        unbounded: bool = False,
        retry: bool | None = None,
    ) -> T:
        """One API call; `retry` (default: for GET only) tries again after a transient
        failure (unreachable, 429, 502-504), honouring `Retry-After`."""
        retries = RETRIES if (method == "GET" if retry is None else retry) else 0
        for attempt in itertools.count():
            try:
                async with self._open(
                    method, path, body=body, params=params, accept=accept, unbounded=unbounded
                ) as response:
                    data = await response.read()
                break
            except CliError as exc:
                delay = _transient_delay(exc, attempt)
                if delay is None or attempt >= retries:
                    raise
                await asyncio.sleep(delay)
        try:
            return msgspec.json.decode(data, type=answer)
        except msgspec.DecodeError as exc:
            raise CliError(f"unexpected answer to {method} {path}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        *,
        body: msgspec.Struct | None = None,
        params: dict[str, str] | None = None,
        accept: frozenset[int] = frozenset(),
        unbounded: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response with a 2xx status (or one in `accept`); error statuses raise ApiError."""
        if self._session is None:
            raise RuntimeError("ApiClient used outside `async with`")
        url = f"{self.base_url}{path}"
        kwargs: dict[str, Any] = {"params": params}
        if body is not None:
            kwargs["data"] = msgspec.json.encode(body)
            kwargs["headers"] = {"Content-Type": "application/json"}
        if unbounded:
            kwargs["timeout"] = _UNBOUNDED
        try:
            async with self._session.request(method, url, **kwargs) as response:
                if not (200 <= response.status < 300 or response.status in accept):
                    data = await response.read()
                    retry_after = response.headers.get("Retry-After", "")
                    raise _error_of(
                        response.status,
                        data,
                        f"{method} {path}",
                        float(retry_after) if retry_after.isdigit() else None,
                    )
                yield response
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ApiUnreachable(self.base_url) from exc
        except aiohttp.ClientError as exc:
            raise CliError(f"{method} {url} failed: {exc}") from exc


def _job_path(job_id: str) -> str:
    return f"/jobs/{quote(job_id, safe='')}"


def _logs_path(job_id: str) -> str:
    return f"{_job_path(job_id)}/logs"


def _attempt(attempt: int | None) -> dict[str, str]:
    return {} if attempt is None else {"attempt": str(attempt)}


def _error_of(status: int, data: bytes, request: str, retry_after_s: float | None) -> ApiError:
    """The server's `ErrorBody`, or a generic message when a proxy answered instead."""
    try:
        body = msgspec.json.decode(data, type=api.ErrorBody)
    except msgspec.DecodeError:
        return ApiError(status, f"{request} answered HTTP {status}", None, retry_after_s)
    return ApiError(status, body.error, body.field, retry_after_s)
