"""Which ticket of a band an agent takes: its own build first, then one nobody holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import msgspec

from agent.affinity import HELD_ELSEWHERE, HELD_HERE, HELD_NOWHERE, NOT_A_TICKET, InstallCache
from infra import events as ev

if TYPE_CHECKING:
    from nats.aio.msg import Msg


def ticket(build: str, installed_on: tuple[str, ...] = ()) -> ev.WorkTicket:
    return ev.WorkTicket(
        batch_id=ev.BatchId(f"b-{build}"),
        org_id="acme",
        app_version_id=build,
        target=ev.Target.EMULATOR,
        band=3,
        ticket=1,
        as_of_seq=1,
        installed_on=tuple(ev.AgentId(a) for a in installed_on),
    )


@dataclass
class _Delivered:
    """All of a NATS message that ranking reads."""

    data: bytes


def message(data: bytes) -> Msg:
    return cast("Msg", _Delivered(data))


def test_a_ticket_ranks_by_where_its_build_is_installed() -> None:
    cache = InstallCache(size=2, agent_id=ev.AgentId("me"))
    cache.add(ticket("v1"))

    def rank(t: ev.WorkTicket) -> int:
        return cache.rank(message(msgspec.json.encode(t)))

    assert rank(ticket("v1")) == HELD_HERE
    assert rank(ticket("v2")) == HELD_NOWHERE
    assert rank(ticket("v2", installed_on=("me",))) == HELD_NOWHERE, "evicted here since"
    assert rank(ticket("v3", installed_on=("other",))) == HELD_ELSEWHERE
    assert cache.rank(message(b"not a ticket")) == NOT_A_TICKET


def test_the_cache_forgets_the_least_recently_used_build() -> None:
    cache = InstallCache(size=2, agent_id=ev.AgentId("me"))
    for build in ("v1", "v2"):
        cache.add(ticket(build))
    assert cache.use(ticket("v1"))
    cache.add(ticket("v3"))
    assert cache.use(ticket("v1"))
    assert not cache.use(ticket("v2"))
