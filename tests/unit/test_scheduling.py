"""Scheduling decisions of the grouping fold, given events and the clock: aging, fair
shares between orgs, org tiers, busy-agent limits and splits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from infra import events as ev
from infra.settings import Scheduling
from projections import splits
from projections.dispatch import Grouping
from tests.unit.factories import T0, assigned, submitted


class Fold:
    """A grouping fold fed one event at a time, keeping every ticket it published."""

    def __init__(self, **policy: Any) -> None:
        self.g = Grouping(Scheduling(**policy))
        self.seq = 0
        self.published: list[ev.WorkTicket] = []

    def __call__(self, *events: ev.Event) -> list[ev.WorkTicket]:
        tickets: list[ev.WorkTicket] = []
        for event in events:
            self.seq += 1
            tickets += self.g.apply(self.seq, event)
        self.published += tickets
        return tickets

    def clock(self, seconds: float) -> list[ev.WorkTicket]:
        """The projector's timer at T0 + `seconds`: its decisions, folded back."""
        return self(*self.g.due(T0 + timedelta(seconds=seconds)))


def job(n: int, org: str = "acme", build: str = "v1", priority: int = 3, **more: Any) -> ev.Event:
    seconds = more.pop("at_s", 0.0)
    return submitted(
        f"j{n}",
        org_id=org,
        app_version_id=build,
        batch_id=ev.BatchId(f"{org}-{build}"),
        priority=priority,
        at=T0 + timedelta(seconds=seconds),
        **more,
    )


def claimed(batch: str, ticket: int, agent: str, at_s: float = 0.0) -> ev.BatchClaimed:
    return ev.BatchClaimed(
        at=T0 + timedelta(seconds=at_s),
        batch_id=ev.BatchId(batch),
        ticket=ticket,
        agent_id=ev.AgentId(agent),
        jobs=1,
    )


def drained(batch: str, ticket: int, agent: str, at_s: float = 0.0) -> ev.BatchDrained:
    return ev.BatchDrained(
        at=T0 + timedelta(seconds=at_s),
        batch_id=ev.BatchId(batch),
        ticket=ticket,
        agent_id=ev.AgentId(agent),
    )


def registered(agent: str) -> ev.AgentRegistered:
    return ev.AgentRegistered(
        at=T0, agent_id=ev.AgentId(agent), targets=(ev.Target.EMULATOR,), runner="simulated"
    )


# -- aging ---------------------------------------------------------------------------------


def test_waiting_raises_a_batch_one_band_per_interval_up_to_the_top() -> None:
    fold = Fold(aging_interval_s=60)
    [first] = fold(job(1, priority=1))
    assert fold.clock(59.9) == []
    [second] = fold.clock(60)
    assert (second.ticket, second.band) == (2, 2), "a new ticket in the next band"
    assert [t.band for t in fold.clock(180)] == [4]
    assert [t.band for t in fold.clock(240)] == [5]
    assert fold.clock(10_000) == [], "nothing above band 5"
    assert first.band == 1


def test_a_low_priority_batch_rises_above_a_stream_of_urgent_work_that_keeps_agents_busy() -> None:
    """Agents take each priority-4 batch as it comes, so a priority-1 batch would wait for
    ever in band 1; after three intervals it competes in band 4, after four it is above."""
    fold = Fold(aging_interval_s=60)
    fold(job(1, org="small", priority=1))
    for n in range(2, 14):
        [ticket] = fold(job(n, org="big", build=f"b{n}", priority=4, at_s=20 * n))
        fold(claimed(ticket.batch_id, ticket.ticket, f"a{n}", at_s=20 * n))
        if n * 20 in (60, 120, 180, 240):
            assert [t.band for t in fold.clock(n * 20)] == [1 + n // 3]
    assert [(t.batch_id, t.band) for t in fold.published if t.org_id == "small"] == [
        ("small-v1", 1),
        ("small-v1", 2),
        ("small-v1", 3),
        ("small-v1", 4),
        ("small-v1", 5),
    ]


def test_a_batch_an_agent_works_does_not_age_its_jobs_wait_for_its_next_claim() -> None:
    fold = Fold(aging_interval_s=60)
    fold(job(1, priority=1), job(2, priority=1), assigned("j1", batch="acme-v1"))
    fold(claimed("acme-v1", 1, "a1"))
    assert fold.clock(600) == []


def test_a_more_urgent_job_joining_a_worked_batch_re_raises_it() -> None:
    fold = Fold()
    fold(job(1, priority=2), assigned("j1", batch="acme-v1"), claimed("acme-v1", 1, "a1"))
    [raised] = fold(job(2, priority=5))
    assert (raised.ticket, raised.band) == (2, 5)


# -- fair shares ---------------------------------------------------------------------------


def test_an_org_flooding_a_band_cannot_hold_back_another_orgs_single_batch() -> None:
    fold = Fold(offered_per_org=2)
    for n in range(10):
        fold(job(n, org="flood", build=f"b{n}"))
    [single] = fold(job(99, org="solo"))
    assert [t.org_id for t in fold.published] == ["flood", "flood", "solo"]
    # As agents take the flood's tickets, its next batches follow, oldest first.
    [nxt] = fold(claimed("flood-b0", 1, "a1"))
    assert nxt.batch_id == "flood-b2"
    assert single.band == 3


def test_orgs_take_turns_when_both_have_batches_waiting() -> None:
    fold = Fold(offered_per_org=1)
    for n in range(3):
        fold(job(n, org="a", build=f"b{n}"), job(10 + n, org="b", build=f"b{n}"))
    order = [t.org_id for t in fold.published]
    for n, agent in zip(range(4), ["x1", "x2", "x3", "x4"], strict=True):
        ticket = fold.published[n]
        fold(claimed(ticket.batch_id, ticket.ticket, agent))
        order = [t.org_id for t in fold.published]
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_a_premium_org_goes_first_within_a_band_but_never_starves_another() -> None:
    fold = Fold(offered_per_org=1, org_tiers={"gold": "premium"}, aging_interval_s=60)
    fold(*(job(n, org="gold", build=f"g{n}") for n in range(8)))
    fold(job(99, org="plain"))
    assert [t.org_id for t in fold.published] == ["gold"]
    for n, seconds in enumerate([100, 200]):
        [nxt] = fold(claimed(f"gold-g{n}", 1, f"a{n}", at_s=seconds))
        assert nxt.org_id == "gold", "premium batches waiting keep the standard one out"
    # Four intervals: what lifts a priority-1 job to the top band. Now it takes turns.
    assert [t.org_id for t in fold(claimed("gold-g2", 1, "a2", at_s=240))] == ["plain", "gold"]


def test_an_org_never_gets_more_busy_agents_than_its_limit() -> None:
    fold = Fold(org_max_busy_agents={"acme": 2}, offered_per_org=10)
    tickets = fold(*(job(n, build=f"b{n}") for n in range(5)))
    assert len(tickets) == 2
    fold(claimed(tickets[0].batch_id, 1, "a1"), claimed(tickets[1].batch_id, 1, "a2"))
    assert fold(job(9, org="other")) != [], "other orgs are not limited"
    fold(assigned("j0", batch=tickets[0].batch_id))
    [third] = fold(drained(tickets[0].batch_id, 1, "a1"))
    assert third.batch_id == "acme-b2"
    stopped = ev.AgentLost(at=T0, agent_id=ev.AgentId("a2"))
    assert [t.batch_id for t in fold(stopped)] == ["acme-b3"]


# -- splits --------------------------------------------------------------------------------


def test_a_large_batch_is_split_when_idle_agents_finish_it_sooner() -> None:
    fold = Fold()
    fold(*(registered(f"a{n}") for n in range(4)))
    fold(
        ev.BuildInstalled(
            at=T0,
            batch_id=ev.BatchId("old"),
            agent_id=ev.AgentId("a0"),
            app_version_id="v0",
            target=ev.Target.EMULATOR,
            duration_s=2.0,
        ),
        submitted("old-job", batch_id=ev.BatchId("old"), app_version_id="v0"),
        ev.JobPassed(
            at=T0, job_id=ev.JobId("old-job"), agent_id=ev.AgentId("a0"), attempt=1, duration_s=0.1
        ),
    )
    fold(*(job(n) for n in range(200)))
    [decision] = fold.g.due(T0)
    assert isinstance(decision, ev.BatchSplit)
    assert decision.parts == 2, "three agents: 2 s install + 200 x 0.1 s / 3"
    assert [t.ticket for t in fold(decision)] == [2, 3]
    assert fold.g.due(T0) == [], "the idle agents are spoken for"


def test_splitting_pays_only_when_the_time_saved_exceeds_the_installs() -> None:
    def extra(jobs: int, workers: int, idle: int = 5) -> int:
        installed = workers > 0
        decided = splits.split(jobs, workers, installed, idle, install_s=2.0, test_s=0.1)
        return 0 if decided is None else decided.parts

    assert extra(jobs=30, workers=0) == 0, "3 s of tests: a second install saves too little"
    assert extra(jobs=100, workers=0) == 1
    assert extra(jobs=60, workers=1) == 0, "its agent has the build already"
    assert extra(jobs=100, workers=0, idle=0) == 0, "nobody free to share it"


def test_a_batch_that_would_outlast_the_rest_of_the_work_gets_agents_as_they_come_free() -> None:
    def extra(rest_s: float) -> int:
        decided = splits.split(
            jobs=120,
            workers=1,
            installed=True,
            idle=0,
            install_s=0.8,
            test_s=0.05,
            rest_s=rest_s,
            agents=8,
        )
        return 0 if decided is None else decided.parts

    assert extra(rest_s=3.0) == 2, "6 s alone: two more save 4 s for 1.6 s of installs"
    assert extra(rest_s=5.5) == 0, "it ends with the rest anyway: nobody is free to share it"
