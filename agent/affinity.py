"""The builds an agent's device holds (a bounded cache, least recently used out first),
and which of a few tickets of one band the agent should take.

It prefers a ticket whose build it holds already, so a build that comes back (more jobs
after its batch drained, jobs given back by a preempted agent) runs where it needs no
second install; next, a build nobody holds; last, one the ticket says another agent
installed lately, which that agent will take without installing when it comes free.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import msgspec

from infra import events as ev

if TYPE_CHECKING:
    from nats.aio.msg import Msg

BuildKey = tuple[str, str, str]
"""(org, app version, target)."""


def build_of(ticket: ev.WorkTicket) -> BuildKey:
    return (ticket.org_id, ticket.app_version_id, ticket.target.value)


HELD_HERE, HELD_NOWHERE, HELD_ELSEWHERE, NOT_A_TICKET = range(4)
"""Ranks of a ticket for an agent, best first."""


class InstallCache:
    """Which builds the device holds, at most `size` of them."""

    def __init__(self, size: int, agent_id: ev.AgentId) -> None:
        self._size = size
        self._agent_id = agent_id
        self._builds: OrderedDict[BuildKey, None] = OrderedDict()

    def use(self, ticket: ev.WorkTicket) -> bool:
        """Whether the ticket's build is installed; if so it is now the most recent."""
        key = build_of(ticket)
        if key not in self._builds:
            return False
        self._builds.move_to_end(key)
        return True

    def add(self, ticket: ev.WorkTicket) -> None:
        self._builds[build_of(ticket)] = None
        if len(self._builds) > self._size:
            self._builds.popitem(last=False)

    def rank(self, msg: Msg) -> int:
        """How much this agent should want a ticket message; lower is better."""
        try:
            ticket = ev.ticket_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return NOT_A_TICKET
        if build_of(ticket) in self._builds:
            return HELD_HERE
        others = set(ticket.installed_on) - {self._agent_id}
        return HELD_ELSEWHERE if others else HELD_NOWHERE
