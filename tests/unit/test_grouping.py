"""The grouping fold: one live ticket per batch with pending jobs."""

from __future__ import annotations

from datetime import timedelta

from infra import events as ev
from projections.grouping import Grouping
from tests.unit.factories import T0, assigned, submitted


def drained(ticket: int, batch: str = "b1") -> ev.BatchDrained:
    return ev.BatchDrained(
        at=T0, batch_id=ev.BatchId(batch), ticket=ticket, agent_id=ev.AgentId("a1")
    )


def test_the_first_job_of_a_batch_issues_a_ticket_and_later_ones_join_it() -> None:
    g = Grouping()
    first = g.apply(1, submitted("j1", priority=2))
    assert first is not None
    assert (first.batch_id, first.ticket, first.band, first.as_of_seq) == ("b1", 1, 2, 1)
    assert g.apply(2, submitted("j2", priority=5)) is None
    assert g.batches["b1"].pending == {"j1": 2, "j2": 5}


def test_different_targets_never_share_a_batch_or_ticket() -> None:
    g = Grouping()
    a = g.apply(1, submitted("j1"))
    b = g.apply(2, submitted("j2", batch_id=ev.BatchId("b2"), target=ev.Target.DEVICE))
    assert a is not None
    assert b is not None
    assert (a.target, b.target) == (ev.Target.EMULATOR, ev.Target.DEVICE)


def test_a_spent_ticket_with_jobs_left_issues_the_next_one_in_their_band() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, submitted("j2", priority=4))
    nxt = g.apply(4, drained(ticket=1))
    assert nxt is not None
    assert (nxt.ticket, nxt.band) == (2, 4)
    assert nxt.as_of_seq == 3, "claims wait for the last job event, not the batch event"


def test_a_spent_ticket_on_an_empty_batch_waits_for_the_next_job() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    assert g.apply(3, drained(ticket=1)) is None
    later = g.apply(4, submitted("j2"))
    assert later is not None
    assert later.ticket == 2


def test_a_stale_ticket_does_not_spend_the_live_one() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    g.apply(4, submitted("j2"))
    assert g.apply(5, drained(ticket=1)) is None
    assert g.batches["b1"].ticket_live


def test_a_retried_job_is_pending_again() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    retried = ev.JobRetried(at=T0, job_id=ev.JobId("j1"), attempt=2, reason="install failed")
    ticket = g.apply(4, retried)
    assert ticket is not None
    assert ticket.ticket == 2


def test_a_rebuild_offers_exactly_the_live_tickets_with_pending_jobs() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, submitted("j2", batch_id=ev.BatchId("b2")))
    g.apply(3, assigned("j2", batch="b2"))
    assert [t.batch_id for t in g.live_tickets()] == ["b1"]


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
    assert g.apply(4, retried("j1", wait_s=5)) is None, "no ticket while the job waits"
    assert g.tick(T0 + timedelta(seconds=4)) == []
    [due] = g.tick(T0 + timedelta(seconds=5))
    assert (due.ticket, due.as_of_seq) == (2, 4)
    assert g.tick(T0 + timedelta(seconds=6)) == [], "one ticket, not one per tick"


def test_a_drained_ticket_leaves_waiting_jobs_to_the_timer_not_to_a_busy_loop() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, retried("j1", wait_s=5))  # the live ticket 1 is still out
    assert g.apply(4, drained(ticket=1)) is None, "its claim found nothing it may run yet"
    [due] = g.tick(T0 + timedelta(seconds=5))
    assert due.ticket == 2


def test_a_new_job_in_a_waiting_batch_is_dispatched_at_once() -> None:
    g = Grouping()
    g.apply(1, submitted("j1"))
    g.apply(2, assigned("j1"))
    g.apply(3, drained(ticket=1))
    g.apply(4, retried("j1", wait_s=60))
    fresh = g.apply(5, submitted("j2"))
    assert fresh is not None
    assert fresh.ticket == 2
    assert g.tick(T0 + timedelta(seconds=60)) == [], "the live ticket covers j1 too"
