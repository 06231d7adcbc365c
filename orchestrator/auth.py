"""Who is calling: API tokens folded from their events, and the middleware that turns a
bearer token into a `Principal` (or a 401) and checks what its role may do."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors
import structlog
from aiohttp import web
from nats.js import api as js_api

from infra import events as ev
from infra import tokens

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.typedefs import Middleware
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

    from orchestrator.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

_RANK = {ev.Role.READ: 0, ev.Role.SUBMIT: 1, ev.Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """The caller of a request."""

    token_id: str
    role: ev.Role
    org_id: str | None
    """None for an admin, who sees every org."""

    def may(self, needed: ev.Role) -> bool:
        return _RANK[self.role] >= _RANK[needed]

    def sees(self, org_id: str) -> bool:
        """Whether this caller may know that `org_id`'s job, batch or log exists."""
        return self.org_id is None or self.org_id == org_id


class AuthError(Exception):
    """The request carries no valid token (401) or its role may not do this (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TokenRegistry:
    """Every token, folded from `qg.evt.token.>` by an ordered consumer, so every
    orchestrator replica knows each token (and each revocation) a moment after its event."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._issued: dict[str, ev.TokenIssued] = {}
        self._revoked: set[str] = set()
        self._position = 0
        self._target = 0
        self._caught_up = asyncio.Event()
        self._sub: Subscription | None = None

    async def start(self, timeout_s: float = 10.0) -> None:
        """Follow the token events, returning once every token stored now is known."""
        try:
            last = await self._js.get_last_msg(ev.EVENTS_STREAM, ev.TOKEN_EVENT_SUBJECTS)
            self._target = last.seq or 0
        except nats.js.errors.NotFoundError:
            self._target = 0
        if self._target == 0:
            self._caught_up.set()
        self._sub = await self._js.subscribe(
            ev.TOKEN_EVENT_SUBJECTS,
            stream=ev.EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.ALL,
            cb=self._on_event,
        )
        async with asyncio.timeout(timeout_s):
            await self._caught_up.wait()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_event(self, msg: Msg) -> None:
        self._position = msg.metadata.sequence.stream
        if self._position >= self._target:
            self._caught_up.set()
        try:
            event = ev.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("event_rejected", stream_seq=self._position, subject=msg.subject)
            return
        self.apply(event)

    def apply(self, event: ev.Event) -> None:
        """Fold one token event (also called by the replica that appended it)."""
        match event:
            case ev.TokenIssued():
                self._issued[event.token_id] = event
            case ev.TokenRevoked():
                self._revoked.add(event.token_id)

    def principal(self, authorization: str | None) -> Principal:
        """The caller named by an `Authorization` header; AuthError(401) otherwise."""
        if not authorization or not authorization.startswith("Bearer "):
            raise AuthError(401, "this request needs a token: Authorization: Bearer <token>")
        parsed = tokens.parse(authorization.removeprefix("Bearer ").strip())
        issued = None if parsed is None else self._issued.get(parsed[0])
        if parsed is None or issued is None or not tokens.matches(parsed[1], issued.secret_sha256):
            raise AuthError(401, "the token is not valid")
        if issued.token_id in self._revoked:
            raise AuthError(401, "the token has been revoked")
        return Principal(token_id=issued.token_id, role=issued.role, org_id=issued.org_id)

    def listed(self) -> list[tuple[ev.TokenIssued, bool]]:
        """Every token with whether it was revoked, oldest first."""
        return [(t, t.token_id in self._revoked) for t in self._issued.values()]


_CALLER = web.RequestKey("principal", Principal)


def caller(request: web.Request) -> Principal:
    """The authenticated caller of a request that went through `authenticate`."""
    return request[_CALLER]


def authenticate(
    registry: TokenRegistry,
    limiter: RateLimiter,
    access: Callable[[web.Request], ev.Role | None],
) -> Middleware:
    """A middleware that requires, for each request, the role `access(request)` names
    (None: a public route, such as `/health`), and counts the request against its
    token's rate limit."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        needed = access(request)
        if needed is None:
            return await handler(request)
        principal = registry.principal(request.headers.get("Authorization"))
        if not principal.may(needed):
            raise AuthError(403, f"a {principal.role} token may not do this ({needed} needed)")
        limiter.take(principal.token_id)
        request[_CALLER] = principal
        structlog.contextvars.bind_contextvars(token_id=principal.token_id)
        return await handler(request)

    return middleware
