"""The job lifecycle fold: given events, when a transition, then a state or an error."""

from __future__ import annotations

from datetime import timedelta

import pytest

from infra import events as ev
from infra import lifecycle
from infra.events import JobStatus
from tests.unit.factories import T0, assigned, errored, passed, started, submitted


def test_a_job_runs_from_queued_to_passed() -> None:
    state = lifecycle.fold([(1, submitted()), (2, assigned()), (3, started()), (4, passed())])
    assert state is not None
    assert state.status is JobStatus.PASSED
    assert state.agent_id == "a1"
    assert state.version == 4
    assert state.terminal


def test_a_finished_job_cannot_start_again() -> None:
    state = lifecycle.fold([(1, submitted()), (2, assigned()), (3, started()), (4, passed())])
    assert state is not None
    with pytest.raises(lifecycle.IllegalTransition, match="is passed"):
        lifecycle.evolve(state, started())


def test_a_failed_test_with_retries_left_is_queued_again_not_failed() -> None:
    state = lifecycle.fold([(1, submitted(retries=1)), (2, assigned()), (3, started())])
    assert state is not None
    first = lifecycle.on_test_failure(state, ev.AgentId("a1"), "boom", 2.0, T0)
    assert isinstance(first, ev.JobRetried)
    assert first.attempt == 2
    state = lifecycle.evolve(state, first, 4)
    assert state.status is JobStatus.QUEUED
    state = lifecycle.evolve(lifecycle.evolve(state, assigned(attempt=2), 5), started(attempt=2), 6)
    second = lifecycle.on_test_failure(state, ev.AgentId("a1"), "boom", 2.0, T0)
    assert isinstance(second, ev.JobFailed)


def test_a_failed_test_without_retries_is_final() -> None:
    state = lifecycle.fold([(1, submitted()), (2, assigned()), (3, started())])
    assert state is not None
    verdict = lifecycle.on_test_failure(state, ev.AgentId("a1"), "assertion", 1.0, T0)
    assert isinstance(verdict, ev.JobFailed)
    assert lifecycle.evolve(state, verdict).status is JobStatus.FAILED


def test_infrastructure_errors_retry_until_the_attempt_limit_then_the_job_is_dead() -> None:
    state = lifecycle.fold([(1, submitted()), (2, assigned()), (3, errored())])
    assert state is not None
    retry = lifecycle.after_infra_error(state, max_attempts=2, now=T0)
    assert isinstance(retry, ev.JobRetried)
    state = lifecycle.evolve(state, retry)
    state = lifecycle.evolve(state, assigned(attempt=2))
    state = lifecycle.evolve(state, errored(attempt=2))
    dead = lifecycle.after_infra_error(state, max_attempts=2, now=T0)
    assert isinstance(dead, ev.JobDead)
    assert "install failed" in dead.reason
    assert lifecycle.evolve(state, dead).status is JobStatus.DEAD


def test_an_infrastructure_retry_waits_a_jittered_exponential_backoff() -> None:
    backoff = lifecycle.Backoff(base_s=2.0, cap_s=10.0)
    delays = [backoff.delay_s("j1", attempt) for attempt in (1, 2, 3, 4, 5)]
    for delay, ceiling in zip(delays, (2, 4, 8, 10, 10), strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert delays == [backoff.delay_s("j1", a) for a in (1, 2, 3, 4, 5)], "same everywhere"
    assert backoff.delay_s("j1", 3) != backoff.delay_s("j2", 3), "jobs do not retry in step"

    state = lifecycle.fold([(1, submitted()), (2, assigned()), (3, errored())])
    assert state is not None
    retry = lifecycle.after_infra_error(state, max_attempts=3, now=T0, backoff=backoff)
    assert isinstance(retry, ev.JobRetried)
    assert retry.not_before == T0 + timedelta(seconds=delays[0])
    waiting = lifecycle.evolve(state, retry)
    assert waiting.not_before == retry.not_before
    assert lifecycle.evolve(waiting, assigned(attempt=2)).not_before is None


def test_a_released_job_is_queued_with_its_attempt_unchanged() -> None:
    state = lifecycle.fold([(1, submitted()), (2, assigned())])
    assert state is not None
    released = ev.JobReleased(
        at=T0, job_id=ev.JobId("j1"), agent_id=ev.AgentId("a1"), reason="agent stopping"
    )
    state = lifecycle.evolve(state, released)
    assert (state.status, state.attempt, state.agent_id) == (JobStatus.QUEUED, 1, None)


def test_events_before_submission_are_rejected() -> None:
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.fold([(1, assigned())])


def test_no_events_fold_to_nothing() -> None:
    assert lifecycle.fold([]) is None


def test_flaky_test_retries_do_not_use_up_infrastructure_attempts() -> None:
    state = lifecycle.fold([(1, submitted(retries=2)), (2, assigned()), (3, started())])
    assert state is not None
    for attempt in (1, 2):  # the test fails twice and is retried twice
        retry = lifecycle.on_test_failure(state, ev.AgentId("a1"), "flaky", 1.0, T0)
        state = lifecycle.evolve(state, retry)
        state = lifecycle.evolve(state, assigned(attempt=attempt + 1))
        state = lifecycle.evolve(state, started(attempt=attempt + 1))
    state = lifecycle.evolve(state, errored(attempt=3))
    follow = lifecycle.after_infra_error(state, max_attempts=2, now=T0)
    assert isinstance(follow, ev.JobRetried), "its first infrastructure error, not its third"


def test_only_the_holder_may_start_or_judge_a_job_and_only_once_it_runs() -> None:
    state = lifecycle.fold([(1, submitted()), (2, assigned(agent="a1"))])
    assert state is not None
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.evolve(state, started(agent="a2"))
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.evolve(state, passed(agent="a1"))  # a verdict needs a started test
    running = lifecycle.evolve(state, started(agent="a1"))
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.evolve(running, passed(agent="a2"))
    assert lifecycle.evolve(running, passed(agent="a1")).status is JobStatus.PASSED
