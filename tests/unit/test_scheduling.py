"""Scheduling decisions of the grouping fold, given events and the clock: aging, fair
shares between orgs, org tiers, busy-agent limits and splits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from infra import bands
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


def observed(
    build: str, install_s: float, test_s: float, target: ev.Target = ev.Target.EMULATOR
) -> tuple[ev.Event, ...]:
    """Events that give the fold its install and test durations for `target`: the test
    costs its agent `test_s`, of which its runner timed half."""
    batch_id = ev.BatchId(f"acme-{build}")
    return (
        ev.BuildInstalled(
            at=T0,
            batch_id=batch_id,
            agent_id=ev.AgentId("a0"),
            app_version_id=build,
            target=target,
            duration_s=install_s,
        ),
        submitted(f"{build}-job", batch_id=batch_id, app_version_id=build, target=target),
        ev.JobStarted(at=T0, job_id=ev.JobId(f"{build}-job"), agent_id=ev.AgentId("a0"), attempt=1),
        ev.JobPassed(
            at=T0 + timedelta(seconds=test_s),
            job_id=ev.JobId(f"{build}-job"),
            agent_id=ev.AgentId("a0"),
            attempt=1,
            duration_s=test_s / 2,
        ),
        drained(batch_id, 1, "a0"),
    )


def registered(agent: str, *targets: ev.Target) -> ev.AgentRegistered:
    return ev.AgentRegistered(
        at=T0,
        agent_id=ev.AgentId(agent),
        targets=targets or (ev.Target.EMULATOR,),
        runner="simulated",
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
    assert (raised.ticket, raised.band) == (2, bands.URGENT)


def test_an_urgent_job_joining_a_batch_aged_to_band_5_moves_it_to_the_urgent_queue() -> None:
    """Aging lifts a batch to band 5 and no further; a job submitted at priority 5 is what
    lets its batch interrupt another between tests."""
    fold = Fold()
    [first] = fold(job(1, priority=1))
    assert [t.band for t in fold.clock(480)] == [5]
    assert fold.clock(10_000) == [], "waiting never reaches the urgent queue"
    [raised] = fold(job(2, priority=5, at_s=10_000))
    assert (first.band, raised.band) == (1, bands.URGENT)


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


def test_idle_agents_get_tickets_beyond_an_orgs_share_and_another_org_still_gets_its_own() -> None:
    fold = Fold(offered_per_org=2)
    fold(*(registered(f"a{n}") for n in range(5)))
    for n in range(8):
        fold(job(n, org="flood", build=f"b{n}"))
    assert len(fold.published) == 5, "one ticket waits for each idle agent, not two in all"
    [single] = fold(job(99, org="solo"))  # within its own share: no idle agent needed
    assert single.org_id == "solo"
    assert fold(job(100, org="flood", build="b9")) == [], "no agent idle without a ticket"
    [more] = fold(registered("a5"), registered("a6"))  # solo's ticket is for one of them
    assert (more.org_id, more.batch_id) == ("flood", "flood-b5"), "the oldest waiting batch"


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
    fold(*observed("v0", install_s=2.0, test_s=0.1))
    fold(*(job(n) for n in range(200)))
    [decision] = fold.g.due(T0)
    assert isinstance(decision, ev.BatchSplit)
    assert decision.parts == 2, "three agents: 2 s install + 200 x 0.1 s / 3"
    assert [t.ticket for t in fold(decision)] == [2, 3]
    assert fold.g.due(T0) == [], "the idle agents are spoken for"


def test_a_test_costs_its_agent_the_time_from_its_last_work_on_the_batch_to_the_verdict() -> None:
    durations = splits.Durations()
    agent, batch, target = ev.AgentId("a1"), "b1", ev.Target.EMULATOR
    install = ev.BuildInstalled(
        at=T0,
        batch_id=ev.BatchId(batch),
        agent_id=agent,
        app_version_id="v1",
        target=target,
        duration_s=0.8,
    )

    def verdict(at_s: float, started: int = 1, batch_id: str = batch) -> None:
        for _ in range(started):
            durations.started(agent)
        durations.tested(agent, batch_id, target, T0 + timedelta(seconds=at_s))

    durations.installed(install)
    verdict(0.05)
    assert durations.test_s[target] == 0.05, "from the end of the install"
    verdict(0.15, started=2)
    assert durations.test_s[target] == 0.05, "a retried failure has no verdict: two tests"
    verdict(5.0, batch_id="b2")
    verdict(5.05, batch_id="b2")
    assert durations.test_s[target] == 0.05, "not from the end of work on another batch"
    assert durations.install_s[target] == 0.8


def test_idle_agents_join_a_batch_only_when_it_then_finishes_sooner() -> None:
    def joined(*batches: tuple[int, int], idle: int = 5, held: int = 0) -> dict[str, int]:
        worked = [splits.Worked(f"b{jobs}", jobs, held, agents) for jobs, agents in batches]
        shares = splits.share(worked, idle, install_s=0.8, test_s=0.04)
        return {batch_id: split.parts for batch_id, split in shares.items()}

    assert joined((45, 1)) == {}, "1.8 s left: 0.5 s sooner does not pay half the install"
    assert joined((50, 1)) == {"b50": 1}, "2 s left: 1.4 s with a second agent"
    assert joined((30, 1), held=20) == {"b30": 1}, "the jobs its agent holds count"
    assert joined((10, 1), held=40) == {}, "a newcomer can only take the jobs still to claim"
    assert joined((200, 1)) == {"b200": 2}, "a third agent from 124 jobs left"
    assert joined((200, 2)) == {"b200": 1}, "one agent on it already, one waiting ticket"
    assert joined((200, 1), idle=1) == {"b200": 1}
    assert joined((200, 1), (60, 1)) == {"b200": 2, "b60": 1}, "each where it helps most"
    assert joined((200, 1), (60, 1), idle=2) == {"b200": 2}, "a third agent helps b200 more"


def test_agents_share_a_batch_only_while_nothing_else_waits_for_them() -> None:
    fold = Fold()
    fold(*(registered(f"a{n}") for n in range(3)))
    fold(*observed("warm", install_s=0.8, test_s=0.04))
    [big] = fold(*(job(n, build="big") for n in range(200)))
    fold(assigned("j0", "a0", batch="acme-big"), claimed("acme-big", big.ticket, "a0"))
    waiting = fold(job(900, build="other"), job(901, build="third"))
    assert len(waiting) == 2
    assert fold.g.due(T0) == [], "the two free agents have batches of their own to take"
    for ticket, job_id, agent in zip(waiting, ["j900", "j901"], ["a1", "a2"], strict=True):
        fold(assigned(job_id, agent, batch=ticket.batch_id), claimed(ticket.batch_id, 1, agent))
    passed = ev.JobPassed(
        at=T0, job_id=ev.JobId("j901"), agent_id=ev.AgentId("a2"), attempt=1, duration_s=0.04
    )
    fold(passed, drained(waiting[1].batch_id, 1, "a2"))
    [decision] = fold.g.due(T0)
    assert isinstance(decision, ev.BatchSplit)
    assert (decision.batch_id, decision.parts) == ("acme-big", 1)


def test_an_idle_agent_serving_two_targets_joins_one_batch_not_one_of_each() -> None:
    both = (ev.Target.EMULATOR, ev.Target.BROWSERSTACK)
    fold = Fold()
    fold(registered("a0"), registered("a1", ev.Target.BROWSERSTACK), registered("a2", *both))
    fold(*observed("warm", install_s=0.8, test_s=0.04))
    fold(*observed("warm-web", install_s=0.8, test_s=0.04, target=ev.Target.BROWSERSTACK))
    fold(*(job(n, build="emu") for n in range(200)))
    fold(*(job(n, build="web", target=ev.Target.BROWSERSTACK) for n in range(200, 400)))
    fold(assigned("j0", "a0", batch="acme-emu"), claimed("acme-emu", 1, "a0"))
    fold(assigned("j200", "a1", batch="acme-web"), claimed("acme-web", 1, "a1"))
    [decision] = fold.g.due(T0)
    assert isinstance(decision, ev.BatchSplit)
    assert decision.parts == 1


def test_a_split_ticket_never_interrupts_another_batch() -> None:
    """Agents give their batch back for urgent work only: a split ticket of an urgent
    batch waits in band 5, for an agent that comes free."""
    fold = Fold()
    fold(*(registered(f"a{n}") for n in range(2)))
    fold(*observed("warm", install_s=0.8, test_s=0.04))
    [urgent] = fold(*(job(n, build="hot", priority=5) for n in range(100)))
    fold(assigned("j0", "a0", batch="acme-hot"), claimed("acme-hot", urgent.ticket, "a0"))
    [decision] = fold.g.due(T0)
    [shared] = fold(decision)
    assert (urgent.band, shared.band) == (bands.URGENT, 5)
