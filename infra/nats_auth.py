"""Who may do what on NATS, and the nats-server configuration that enforces it.

Two accounts. The service account (`QG`) holds every stream; the orchestrator and the
projectors connect to it as `qgjob` with full rights. Agents connect to the agent account
(`AGENTS`), which has no streams of its own and reaches the service account only through
the few subjects it imports (accounts are isolated otherwise), each agent user further
limited by permissions to its own targets, agent ids and inbox:

- what an agent stores goes through the append gate (`infra/append_gate.py`): the agent
  account maps `qg.evt.>` (events), `$KV.QG_AGENTS.>` (heartbeats) and `$O.QG_LOGS.>`
  (log objects) onto `qg.gate.>`, which the gate serves in the service account, so every
  write is checked before it reaches a stream;
- JetStream API requests are mapped from `$JS.API.>` onto `$JS.QG.API.>` so that they
  reach the service account's imports instead of the server's own answer for an account
  without JetStream; only the calls an agent makes are imported: its work consumers' info
  and next message, acks, reading the last event of a job subject, and binding to the
  registry bucket and the log store (reading a log object's record, to replace it).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from infra import bands, logstore
from infra import events as ev
from infra import nats as qnats

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

SERVICE_ACCOUNT = "QG"
AGENT_ACCOUNT = "AGENTS"
SERVICE_USER = "qgjob"
LOCAL_AGENT_USER = "agent"
"""The agent user of the embedded stack that any agent on the machine may use (it may
serve every target under any agent id); `qgjob up`'s own agents get a narrower one."""

GATE = "qg.gate"
GATE_EVENTS = f"{GATE}.evt"
"""Where an agent's event appends arrive in the service account, followed by the rest of
the event subject (`qg.gate.evt.job.<id>` for `qg.evt.job.<id>`)."""
GATE_REGISTRY = f"{GATE}.kv"
"""Where an agent's heartbeats arrive, followed by the key."""
GATE_LOGS = f"{GATE}.obj"
"""Where an agent's log object writes arrive, followed by the rest of the object store
subject (`qg.gate.obj.C.<nuid>` for a chunk, `qg.gate.obj.M.<name>` for its record)."""
HINT_SUBJECTS = "qg.hint.>"
"""Core-NATS hints agents exchange among themselves (agent/tickets.py)."""

REGISTRY_SUBJECTS = f"$KV.{qnats.REGISTRY_BUCKET}"
LOGS_SUBJECTS = f"$O.{logstore.BUCKET}"
_REGISTRY_STREAM = f"KV_{qnats.REGISTRY_BUCKET}"
_LOGS_STREAM = f"OBJ_{logstore.BUCKET}"
_JOB_SUBJECTS = ev.job_subject("*")
_API = "$JS.API"
_AGENT_API = "$JS.QG.API"


def _api(call: str) -> str:
    """A JetStream API subject as an agent's request leaves the agent account."""
    return f"{_AGENT_API}.{call}"


_SERVICES: tuple[tuple[str, str], ...] = (
    (f"{GATE}.>", f"{GATE}.>"),
    (ev.CLAIM_SUBJECT, ev.CLAIM_SUBJECT),
    (logstore.LIVE_SUBJECTS, logstore.LIVE_SUBJECTS),
    (f"$JS.ACK.{ev.WORK_STREAM}.>", f"$JS.ACK.{ev.WORK_STREAM}.>"),
    *(
        (f"{_API}.{call}", _api(call))
        for call in (
            f"CONSUMER.INFO.{ev.WORK_STREAM}.*",
            f"CONSUMER.MSG.NEXT.{ev.WORK_STREAM}.*",
            f"DIRECT.GET.{ev.EVENTS_STREAM}.{_JOB_SUBJECTS}",
            f"STREAM.INFO.{_REGISTRY_STREAM}",
            f"STREAM.INFO.{_LOGS_STREAM}",
            f"STREAM.MSG.GET.{_LOGS_STREAM}",
        )
    ),
)
"""Request/reply subjects the service account serves to the agent account: (subject in
the service account, subject an agent publishes to after the agent account's mappings)."""
_STREAMED_RESPONSES = frozenset({f"{_API}.CONSUMER.MSG.NEXT.{ev.WORK_STREAM}.*"})
"""Services that answer with several messages (a pull request's tickets and statuses)."""
_STREAMS = (ev.TICKET_NOTICES, ev.JOB_EVENT_SUBJECTS)
"""Subjects whose messages the agent account sees: ticket notices (to wake up when a
ticket is stored) and job events (to stop a test whose job is cancelled)."""
_MAPPINGS = {
    ev.EVENT_SUBJECTS: f"{GATE_EVENTS}.>",
    f"{REGISTRY_SUBJECTS}.>": f"{GATE_REGISTRY}.>",
    f"{LOGS_SUBJECTS}.>": f"{GATE_LOGS}.>",
    f"{_API}.>": f"{_AGENT_API}.>",
}


@dataclass(frozen=True)
class AgentGrant:
    """One agent user and what it may do."""

    user: str
    targets: tuple[ev.Target, ...] = tuple(ev.Target)
    agent_ids: tuple[str, ...] | None = None
    """The agent ids it may register and heartbeat as; None: any."""

    def permissions(self) -> dict[str, Any]:
        """Its nats-server permissions, on subjects as they are after the account's
        mappings (which is what the server checks)."""
        ids = ("*",) if self.agent_ids is None else self.agent_ids
        consumers = [qnats.work_consumer_name(t, b) for t in self.targets for b in bands.QUEUES]
        publish = [
            f"{GATE_EVENTS}.job.*",
            f"{GATE_EVENTS}.batch.*",
            *(f"{GATE_EVENTS}.agent.{agent_id}" for agent_id in ids),
            *(f"{GATE_REGISTRY}.{agent_id}" for agent_id in ids),
            ev.CLAIM_SUBJECT,
            logstore.LIVE_SUBJECTS,
            *(_api(f"CONSUMER.INFO.{ev.WORK_STREAM}.{c}") for c in consumers),
            *(_api(f"CONSUMER.MSG.NEXT.{ev.WORK_STREAM}.{c}") for c in consumers),
            *(f"$JS.ACK.{ev.WORK_STREAM}.{c}.>" for c in consumers),
            _api(f"DIRECT.GET.{ev.EVENTS_STREAM}.{_JOB_SUBJECTS}"),
            _api(f"STREAM.INFO.{_REGISTRY_STREAM}"),
            _api(f"STREAM.INFO.{_LOGS_STREAM}"),
            _api(f"STREAM.MSG.GET.{_LOGS_STREAM}"),
            f"{GATE_LOGS}.C.>",
            f"{GATE_LOGS}.M.>",
            HINT_SUBJECTS,
        ]
        subscribe = [
            f"{qnats.inbox_prefix(self.user)}.>",
            _JOB_SUBJECTS,
            *(ev.ticket_notices(t) for t in self.targets),
            HINT_SUBJECTS,
        ]
        return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def server_config(passwords: Mapping[str, str], agents: Sequence[AgentGrant]) -> str:
    """The nats-server configuration (JSON, which nats-server reads) of the two accounts:
    the service user and `agents`, with their passwords from `passwords`."""
    service = {
        "jetstream": "enabled",
        "users": [{"user": SERVICE_USER, "password": passwords[SERVICE_USER]}],
        "exports": [
            *(
                {"service": subject, "response_type": "stream"}
                if subject in _STREAMED_RESPONSES
                else {"service": subject}
                for subject, _ in _SERVICES
            ),
            *({"stream": subject} for subject in _STREAMS),
        ],
    }
    agent = {
        "users": [
            {"user": g.user, "password": passwords[g.user], "permissions": g.permissions()}
            for g in agents
        ],
        "mappings": _MAPPINGS,
        "imports": [
            *(
                {"service": {"account": SERVICE_ACCOUNT, "subject": subject}, "to": local}
                for subject, local in _SERVICES
            ),
            *({"stream": {"account": SERVICE_ACCOUNT, "subject": s}} for s in _STREAMS),
        ],
    }
    config = {"accounts": {SERVICE_ACCOUNT: service, AGENT_ACCOUNT: agent}}
    return json.dumps(config, indent=2)


def with_user(url: str, user: str, password: str) -> str:
    """`url` connecting as `user`."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{_address(parts.netloc)}"))


def without_credentials(url: str) -> str:
    """`url` without its user and password, fit to show."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=_address(parts.netloc)))


def _address(netloc: str) -> str:
    return netloc.rpartition("@")[2]


class LocalCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """The embedded server's users, kept under QG_HOME (readable by its owner only) so
    that a restart, and other qgjob commands on the machine, use the same ones."""

    url: str = ""
    """The embedded server's address when it last started."""
    passwords: dict[str, str] = {}


CREDENTIALS_FILE = "credentials.json"


def _kept(store_dir: Path) -> LocalCredentials | None:
    path = store_dir / CREDENTIALS_FILE
    return msgspec.json.decode(path.read_bytes(), type=LocalCredentials) if path.exists() else None


def load_credentials(store_dir: Path, users: Sequence[str]) -> LocalCredentials:
    """The credentials kept in `store_dir`, with a new password for each of `users` that
    has none yet (saved at once)."""
    kept = _kept(store_dir)
    credentials = kept or LocalCredentials()
    missing = {u: secrets.token_urlsafe(24) for u in users if u not in credentials.passwords}
    if kept is not None and not missing:
        return kept
    credentials = msgspec.structs.replace(credentials, passwords=credentials.passwords | missing)
    save_credentials(store_dir, credentials)
    return credentials


def save_credentials(store_dir: Path, credentials: LocalCredentials) -> None:
    write_private(store_dir / CREDENTIALS_FILE, msgspec.json.encode(credentials))


def write_private(path: Path, data: bytes) -> None:
    """Write `path` readable and writable by its owner only, whatever it was before."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data)


def local_url(store_dir: Path, url: str, user: str) -> str:
    """`url` connecting as `user` when it names the embedded server whose credentials are
    kept in `store_dir` and carries none of its own; else `url` unchanged (an external
    server, or credentials given explicitly)."""
    credentials = None if urlsplit(url).username is not None else _kept(store_dir)
    if credentials is None or credentials.url != url.rstrip("/"):
        return url
    password = credentials.passwords.get(user)
    return url if password is None else with_user(url, user, password)
