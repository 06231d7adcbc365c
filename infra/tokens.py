"""API tokens: `qgt_<token id>_<secret>`. Only a SHA-256 of the secret is ever recorded
(in a `TokenIssued` event), so the event log never holds a usable token."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING

from infra import events as ev

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from infra.eventlog import EventLog

PREFIX = "qgt"
_TOKEN = re.compile(rf"^{PREFIX}_([a-z0-9]{{12}})_([A-Za-z0-9_-]{{43}})$")


def digest(secret: str) -> str:
    """The recorded form of a secret. Secrets are 256 random bits, so a plain hash is
    enough: there is nothing to brute-force."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(
    org_id: str | None, role: ev.Role, name: str, now: datetime
) -> tuple[str, ev.TokenIssued]:
    """A new token: the text to hand over once, and the event that records it."""
    token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    event = ev.TokenIssued(
        at=now,
        token_id=token_id,
        org_id=None if role is ev.Role.ADMIN else org_id,
        role=role,
        secret_sha256=digest(secret),
        name=name,
    )
    return f"{PREFIX}_{token_id}_{secret}", event


async def new_admin(events: EventLog, name: str) -> str:
    """Record a new admin token straight on the event log (how a deployment gets its
    first one); returns the token, shown this once."""
    text, issued = issue(None, ev.Role.ADMIN, name, ev.utcnow())
    await events.append(issued)
    return text


LOCAL_ADMIN_FILE = "admin-token"
"""Where `qgjob up` keeps its admin token, under QG_HOME; the CLI reads it by default."""


async def local_admin(events: EventLog, home: Path) -> str:
    """The admin token `qgjob up` left in `home`, if the event log still has it and it
    is not revoked; else a new one, written there (readable by its owner only)."""
    path = home / LOCAL_ADMIN_FILE
    if path.exists():
        text = path.read_text().strip()
        parsed = parse(text)
        last = None if parsed is None else await events.last(ev.token_subject(parsed[0]))
        if last is not None and isinstance(last[1], ev.TokenIssued):
            return text
    text = await new_admin(events, "qgjob up (local admin)")
    path.touch(mode=0o600)
    path.write_text(text + "\n")
    return text


def parse(text: str) -> tuple[str, str] | None:
    """(token id, secret) of a well-formed token; None otherwise."""
    match = _TOKEN.match(text)
    return None if match is None else (match.group(1), match.group(2))


def matches(secret: str, recorded: str) -> bool:
    """Whether `secret` is the one whose digest was recorded (constant time)."""
    return hmac.compare_digest(digest(secret), recorded)
