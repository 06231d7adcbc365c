"""The claim RPC between agents and the orchestrator (NATS request/reply)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from infra.events import AgentId, BatchId, JobId
from infra.lifecycle import JobState


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An agent holding dispatch ticket `ticket` of `batch_id` asks for its pending jobs."""

    agent_id: AgentId
    batch_id: BatchId
    ticket: int
    as_of_seq: int = 0
    """Wait until the read model has folded at least this stream sequence."""
    holding: tuple[JobId, ...] = ()
    """The jobs of the agent's last claim, which it ran, gave back or still runs: the read
    model may show them running, and the claim does not take them for jobs the agent lost
    track of."""


class ClaimedJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job now assigned to the agent; `state.version` is the `JobAssigned` sequence,
    the expected subject sequence of the agent's next append."""

    state: JobState


class ClaimResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The jobs now assigned to the agent, in run order; empty: the ticket is spent."""

    jobs: list[ClaimedJob]
    queued_after: int = 0
    """The batch's jobs still queued beyond these, as the claim saw it: the agent's work
    on the batch goes on after them."""
    error: str | None = None


OPS_SUBJECT = "qg.rpc.ops"
"""Served by the projector processes: rebuild or verify read models."""


class OpsRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Rebuild read models from QG_EVENTS: swap them in (`replay`), or only compare them
    with the live tables (`verify`)."""

    action: Literal["replay", "verify"]
    projection: str | None = None
    """One read model by name; None: all of them."""
    until: Annotated[int, msgspec.Meta(ge=0)] | None = None
    """Replay only: fold events up to this stream sequence into a kept schema for
    inspection, instead of swapping the result in."""


class ProjectionReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay or verify did to one read model."""

    projection: str
    last_seq: int
    """The stream sequence the rebuilt model reached."""
    rows: int
    """Rows in the rebuilt model's tables."""
    differing: int | None = None
    """Verify: rows that are in one of the live and rebuilt tables but not the other."""


class OpsResponse(msgspec.Struct, frozen=True, kw_only=True):
    projections: list[ProjectionReport] = []
    schema: str | None = None
    """Where a replay `until` a sequence left its tables."""
    seconds: float = 0.0
    error: str | None = None
