"""The dispatch fold: one live ticket per batch with pending jobs, re-raised when a more
urgent job joins, and the clock's decisions recorded as events."""

from __future__ import annotations

from datetime import timedelta

from infra import bands
from infra import events as ev
from projections.dispatch import Grouping
from projections.grouping import decision_id
from tests.unit.factories import T0, assigned, submitted


def drained(ticket: int, batch: str = "b1") -> ev.BatchDrained:
    return ev.BatchDrained(
        at=T0, batch_id=ev.BatchId(batch), ticket=ticket, agent_id=ev.AgentId("a1")
    )


def claimed(ticket: int, batch: str = "b1", agent: str = "a1") -> ev.BatchClaimed:
    return ev.BatchClaimed(
        at=T0, batch_id=ev.BatchId(batch), ticket=ticket, agent_id=ev.AgentId(agent), jobs=1
    )


def one(tickets: list[ev.WorkTicket]) -> ev.WorkTicket:
    [ticket] = tickets
    return ticket


def tick(g: Grouping, seq: int, seconds: float) -> list[ev.WorkTicket]:
    """The projector's timer at T0 + `seconds`: record what is due, fold it back."""
    tickets: list[ev.WorkTicket] = []
    for decision in g.due(T0 + timedelta(seconds=seconds)):
        tickets += g.apply(seq, decision)
        seq += 1
    return tickets


def test_the_first_job_of_a_batch_issues_a_ticket_and_later_ones_join_it() -> None:
    g = Grouping()
    first = one(g.apply(1, submitted("j1", priority=2)))
    assert (first.batch_id, first.ticket, first.band, first.as_of_seq) == ("b1", 1, 2, 1)
    assert g.apply(2, submitted("j2", priority=2)) == []
    assert set(g.batches["b1"].pending) == {"j1", "j2"}


def test_different_targets_never_share_a_batch_or_ticket() -> None:
    g = Grouping()
    a = one(g.apply(1, submitted("j1")))
    b = one(g.apply(2, submitted("j2", batch_id=ev.BatchId("b2"), target=ev.Target.DEVICE)))
    assert (a.target, b.target) == (ev.Target.EMULATOR, ev.Target.DEVICE)


def test_a_spent_ticket_with_jobs_left_issues_the_next_one_in_their_band() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, submitted("j2", priority=2))
    nxt = one(g.apply(4, drained(ticket=1)))
    assert (nxt.ticket, nxt.band) == (2, 2)
    assert nxt.as_of_seq == 3, "claims wait for the last job event, not the batch event"


def test_a_more_urgent_job_re_raises_the_live_ticket_into_its_band() -> None:
    g = Grouping()
    g.apply(1, submitted("j1", priority=2))
    raised = one(g.apply(2, submitted("j2", priority=5)))
    assert (raised.ticket, raised.band) == (2, bands.URGENT)
    assert g.apply(3, drained(ticket=1)) == [], "the old ticket is stale: spending it does nothing"
    assert list(g.batches["b1"].live) == [2]


def test_a_spent_ticket_on_an_empty_batch_waits_for_the_next_job() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    assert g.apply(3, drained(ticket=1)) == []
    assert one(g.apply(4, submitted("j2"))).ticket == 2


def test_a_stale_ticket_does_not_spend_the_live_one() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    g.apply(4, submitted("j2"))
    assert g.apply(5, drained(ticket=1)) == []
    assert g.batches["b1"].ticket_live


def test_a_batch_given_back_gets_a_fresh_ticket_for_its_released_jobs() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, claimed(ticket=1))
    released = ev.JobReleased(
        at=T0, job_id=ev.JobId("j1"), agent_id=ev.AgentId("a1"), reason="preempted by band 5"
    )
    assert g.apply(4, released) == [], "the agent still holds the live ticket"
    yielded = ev.BatchYielded(
        at=T0,
        batch_id=ev.BatchId("b1"),
        ticket=1,
        agent_id=ev.AgentId("a1"),
        reason="preempted by band 5",
    )
    assert one(g.apply(5, yielded)).ticket == 2
    assert g.working == {}


def test_a_batch_set_aside_keeps_its_ticket_for_the_agent_that_comes_back() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, submitted("j2"))
    g.apply(3, assigned("j1"))
    g.apply(4, assigned("j2"))
    g.apply(5, claimed(ticket=1))
    reason = "set aside for urgent work"
    released = ev.JobReleased(
        at=T0, job_id=ev.JobId("j2"), agent_id=ev.AgentId("a1"), reason=reason
    )
    assert g.apply(6, released) == []
    set_aside = ev.BatchYielded(
        at=T0,
        batch_id=ev.BatchId("b1"),
        ticket=1,
        agent_id=ev.AgentId("a1"),
        reason=reason,
        returns=True,
    )
    assert g.apply(7, set_aside) == [], "no fresh ticket: its agent comes back with ticket 1"
    assert g.working == {}, "the agent works the urgent batch meanwhile"
    assert list(g.batches["b1"].live) == [1]
    assert g.apply(8, claimed(ticket=1)) == []
    assert g.working == {ev.AgentId("a1"): g.batches["b1"]}


def test_a_retried_job_is_pending_again() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    retried = ev.JobRetried(at=T0, job_id=ev.JobId("j1"), attempt=2, reason="install failed")
    assert one(g.apply(4, retried)).ticket == 2


def test_a_rebuild_offers_the_live_tickets_with_pending_jobs_and_those_waiting_in_a_queue() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, submitted("j2", batch_id=ev.BatchId("b2")))
    g.apply(3, assigned("j2", batch="b2"))
    g.apply(4, claimed(ticket=1, batch="b2"))
    g.apply(5, submitted("j3", batch_id=ev.BatchId("b3")))
    g.apply(6, assigned("j3", batch="b3"))
    assert [t.batch_id for t in g.live_tickets()] == ["b1", "b3"], "b2's ticket is worked"


def test_a_ticket_a_replay_issued_exists_after_a_rebuild_though_a_stale_claim_took_its_jobs() -> (
    None
):
    """Seen in a chaos run (projector killed): while the projector was down, a more
    urgent job re-raised a batch (ticket 2) after an agent had taken its ticket 1; the
    agent's claim took every job. The rebuilt projector never published ticket 2, and a
    job that came back to the batch (a retried flaky test) waited for it for ever."""
    g = Grouping()
    g.apply(1, submitted("j1", priority=1))
    g.apply(2, submitted("j2", priority=4))  # ticket 2, band 4; ticket 1 is stale
    g.apply(3, assigned("j1"))
    g.apply(4, assigned("j2"))
    g.apply(5, claimed(ticket=1))
    assert [t.ticket for t in g.live_tickets()] == [2]


def retried(job: str, wait_s: float) -> ev.JobRetried:
    return ev.JobRetried(
        at=T0,
        job_id=ev.JobId(job),
        attempt=2,
        reason="install failed",
        not_before=T0 + timedelta(seconds=wait_s),
    )


def test_a_job_in_retry_backoff_gets_its_ticket_when_the_wait_ends() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    assert g.apply(4, retried("j1", wait_s=5)) == [], "no ticket while the job waits"
    assert g.due(T0 + timedelta(seconds=4)) == []
    [decision] = g.due(T0 + timedelta(seconds=5))
    assert isinstance(decision, ev.BatchDue)
    assert decision.reason == "retry backoff over"
    due = one(g.apply(5, decision))
    assert (due.ticket, due.as_of_seq) == (2, 4)
    assert g.due(T0 + timedelta(seconds=6)) == [], "one ticket, not one per tick"


def test_a_drained_ticket_leaves_waiting_jobs_to_the_timer_not_to_a_busy_loop() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, retried("j1", wait_s=5))  # the live ticket 1 is still out
    assert g.apply(4, drained(ticket=1)) == [], "its claim found nothing it may run yet"
    assert one(tick(g, 5, seconds=5)).ticket == 2


def test_a_new_job_in_a_waiting_batch_is_dispatched_at_once() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    g.apply(4, retried("j1", wait_s=60))
    assert one(g.apply(5, submitted("j2"))).ticket == 2
    assert tick(g, 6, seconds=60) == [], "the live ticket covers j1 too"


def test_the_clocks_decisions_replay_to_the_same_tickets() -> None:
    """A rebuilt fold reads the recorded decisions back, so it numbers tickets as the
    live projector did (the timer alone would not run during a rebuild)."""
    live = Grouping()
    log: list[ev.Event] = [
        submitted("j1"),
        assigned("j1"),
        drained(ticket=1),
        retried("j1", wait_s=5),
    ]
    for seq, event in enumerate(log, start=1):
        live.apply(seq, event)
    log += live.due(T0 + timedelta(seconds=5))
    live.apply(len(log), log[-1])
    log.append(submitted("j2"))
    live.apply(len(log), log[-1])
    rebuilt = Grouping()
    for seq, event in enumerate(log, start=1):
        rebuilt.apply(seq, event)
    assert rebuilt.live_tickets() == live.live_tickets()
    assert [t.ticket for t in rebuilt.live_tickets()] == [2]


def test_a_decision_keeps_its_message_id_until_the_fold_has_read_it_back() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    g.apply(4, retried("j1", wait_s=5))
    review_at = g.batches["b1"].review_at
    [first] = g.due(T0 + timedelta(seconds=5))
    [again] = g.due(T0 + timedelta(seconds=5.5))
    assert decision_id(first, review_at) == decision_id(again, review_at)
