"""The append gate: the only way what an agent writes reaches a stream.

Agents' credentials give no direct access to the service account's streams
(infra/nats_auth.py): the agent account maps their appends to `qg.evt.<aggregate>.<id>`,
their registry writes to `$KV.QG_AGENTS.<key>` and their log object writes to
`$O.QG_LOGS.<...>` onto `qg.gate.evt.`, `qg.gate.kv.` and `qg.gate.obj.`, served here in
the service account. The gate stores what an agent may write, with the service's
credentials, and answers with JetStream's own acknowledgement (so agents write exactly
as they would without it); anything else gets an error acknowledgement (code 403) and
nothing is stored.

An agent may append only the events an agent records (`AGENT_EVENTS`: never
`JobSubmitted`, `JobAssigned`, `JobCancelled`, a batch's drain or claim, `AgentLost` or a
token), each on its own aggregate's subject, and a job event only guarded by the job's
current sequence (`Nats-Expected-Last-Subject-Sequence` > 0), so that it can never start a
job subject of its own. It may put and delete registry keys, and write log objects,
replacing an object's record (a rollup of that one subject) but nothing more: a rollup
of a whole stream, or any header not named here, never reaches a stream.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import structlog
from nats.js import api

from infra import events as ev
from infra import nats as qnats
from infra import nats_auth
from infra.acks import Ack, AckError
from infra.responder import Responder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping

    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = structlog.get_logger(__name__)

AGENT_JOB_EVENTS = (
    ev.JobStarted,
    ev.JobPassed,
    ev.JobFailed,
    ev.JobErrored,
    ev.JobRetried,
    ev.JobDead,
    ev.JobReleased,
)
AGENT_EVENTS = (
    *AGENT_JOB_EVENTS,
    ev.BuildInstalled,
    ev.BatchYielded,
    ev.AgentRegistered,
    ev.AgentStopped,
)
"""What agents record: running their jobs, installing builds, giving batches back, and
registering and stopping themselves."""

REFUSED = 403
QUEUE = "append-gate"
_EVENT_HEADERS = frozenset({api.Header.MSG_ID, api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE})
_KV_OPERATION = "KV-Operation"
_ROLLUP = api.Header.ROLLUP
_REQUEST_INFO = "Nats-Request-Info"
"""Added by nats-server to a request that crossed from another account: who sent it."""


class Refused(Exception):
    """An agent's write the gate does not pass on."""


Checked = tuple[str, dict[str, str]]
"""Where to store an agent's write, and the headers that go with it."""


def check_event(rest: str, data: bytes, headers: Mapping[str, str]) -> Checked:
    """Where and how to append an agent's event sent to `qg.evt.<rest>`; raises Refused
    when an agent may not append it."""
    target = f"{ev.EVENT_SUBJECTS.removesuffix('>')}{rest}"
    try:
        event = ev.decode(data)
    except msgspec.DecodeError as exc:
        raise Refused(f"not an event: {exc}") from exc
    if not isinstance(event, AGENT_EVENTS):
        raise Refused(f"agents may not append {ev.tag_of(event)}")
    if ev.subject_of(event) != target:
        raise Refused(f"{ev.tag_of(event)} belongs on {ev.subject_of(event)}, not {target}")
    passed = {name: value for name, value in headers.items() if name in _EVENT_HEADERS}
    expected = passed.get(api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE, "")
    if isinstance(event, AGENT_JOB_EVENTS) and not (expected.isdigit() and int(expected) > 0):
        raise Refused(f"{ev.tag_of(event)} must be guarded by the job's current sequence")
    return target, passed


def check_heartbeat(rest: str, data: bytes, headers: Mapping[str, str]) -> Checked:
    """Where and how to store an agent's heartbeat (a put) or goodbye (a delete) of
    registry key `rest`; raises Refused for any other registry operation."""
    operation = headers.get(_KV_OPERATION)
    if operation not in (None, "DEL"):
        raise Refused(f"agents may not {operation} registry keys")
    target = f"{nats_auth.REGISTRY_SUBJECTS}.{rest}"
    return target, {} if operation is None else {_KV_OPERATION: operation}


def check_log_write(rest: str, data: bytes, headers: Mapping[str, str]) -> Checked:
    """Where and how to store an agent's log chunk (`C.<nuid>`) or object record
    (`M.<name>`); raises Refused for a rollup other than replacing one record."""
    target = f"{nats_auth.LOGS_SUBJECTS}.{rest}"
    rollup = headers.get(_ROLLUP)
    if rollup is None:
        return target, {}
    if rollup != "sub" or not rest.startswith("M."):
        raise Refused(f"agents may not roll up {target} ({rollup})")
    return target, {_ROLLUP: rollup}


_CHECKS: dict[str, Callable[[str, bytes, Mapping[str, str]], Checked]] = {
    nats_auth.GATE_EVENTS: check_event,
    nats_auth.GATE_REGISTRY: check_heartbeat,
    nats_auth.GATE_LOGS: check_log_write,
}
"""Each gate route (the first three tokens of the subject) and its check, which gets
the rest of the subject."""


def _error_ack(code: int, description: str) -> bytes:
    return msgspec.json.encode(Ack(error=AckError(code=code, description=description)))


class AppendGate(Responder):
    """Serves `qg.gate.>` as the claim and ops services are served (infra.responder: a
    queue group, so that orchestrator replicas share it, and a task per write, so that a
    slow one holds up no other)."""

    def __init__(self, nc: Client, timeout_s: float = 5.0) -> None:
        super().__init__(nc, f"{nats_auth.GATE}.>", QUEUE, self._pass_on)
        self._timeout_s = timeout_s

    async def _pass_on(self, msg: Msg) -> bytes:
        """Store an agent's write if it may make it: JetStream's acknowledgement, or an
        error acknowledgement."""
        route, _, rest = msg.subject.removeprefix(nats_auth.GATE + ".").partition(".")
        try:
            check = _CHECKS.get(f"{nats_auth.GATE}.{route}")
            if check is None or not rest:
                raise Refused(f"nothing is stored through {msg.subject}")
            target, passed = check(rest, msg.data, msg.headers or {})
        except Refused as exc:
            sender = (msg.headers or {}).get(_REQUEST_INFO)  # as sent: JSON, never parsed
            log.warning("append_refused", subject=msg.subject, reason=str(exc), sender=sender)
            return _error_ack(REFUSED, str(exc))
        return await self._store(target, msg.data, passed)

    async def _store(self, subject: str, data: bytes, headers: dict[str, str]) -> bytes:
        try:
            reply = await self._nc.request(
                subject, data, timeout=self._timeout_s, headers=headers or None
            )
        except nats.errors.NoRespondersError:
            return _error_ack(503, f"no stream stores {subject}")
        except nats.errors.TimeoutError:
            return _error_ack(504, f"the stream storing {subject} did not answer")
        return reply.data


@contextlib.asynccontextmanager
async def serving(nats_url: str) -> AsyncIterator[None]:
    """Serve the gate, connected with the service's credentials, for the block's length."""
    nc = await qnats.connect(nats_url, name="qgjob-append-gate")
    gate = AppendGate(nc)
    try:
        await gate.start()
        yield
    finally:
        await gate.stop()
        await qnats.close(nc)
