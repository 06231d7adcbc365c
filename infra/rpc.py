"""The claim RPC between agents and the orchestrator (NATS request/reply)."""

from __future__ import annotations

import msgspec

from infra.events import AgentId, BatchId
from infra.lifecycle import JobState


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    """An agent holding dispatch ticket `ticket` of `batch_id` asks for its pending jobs."""

    agent_id: AgentId
    batch_id: BatchId
    ticket: int
    as_of_seq: int = 0
    """Wait until the read model has folded at least this stream sequence."""


class ClaimedJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job now assigned to the agent; `state.version` is the `JobAssigned` sequence,
    the expected subject sequence of the agent's next append."""

    state: JobState


class ClaimResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The jobs now assigned to the agent, in run order; empty: the ticket is spent."""

    jobs: list[ClaimedJob]
    error: str | None = None
