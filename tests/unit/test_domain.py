"""Submission decisions: priorities, batch keys, ids, cancels."""

from __future__ import annotations

import msgspec
import pytest

from infra import api, lifecycle
from infra import events as ev
from orchestrator import domain
from tests.unit.factories import T0, assigned, started, submitted


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (1, 1),
        (5, 5),
        ("3", 3),
        ("low", 1),
        ("normal", 3),
        ("medium", 3),
        ("high", 4),
        ("urgent", 5),
        ("CRITICAL", 5),
    ],
)
def test_priorities_accept_numbers_and_names(given: int | str, expected: int) -> None:
    assert api.parse_priority(given) == expected


@pytest.mark.parametrize("bad", [0, 6, "7", "soon", ""])
def test_bad_priorities_are_refused_with_the_allowed_values(bad: int | str) -> None:
    with pytest.raises(ValueError, match="priority must be"):
        api.parse_priority(bad)


def spec(**fields: object) -> api.JobSpec:
    values = {
        "org_id": "qualgent",
        "app_version_id": "xyz123",
        "test_path": "tests/onboarding.spec.js",
        "target": "emulator",
        **fields,
    }
    return msgspec.convert(values, api.JobSpec)


def test_jobs_of_one_org_build_and_target_share_a_batch() -> None:
    a = domain.submit(spec(test_path="tests/a.spec.js", priority=5), T0)
    b = domain.submit(spec(test_path="tests/b.spec.js", priority="low"), T0)
    assert a.batch_id == b.batch_id
    assert (a.priority, b.priority) == (5, 1)


@pytest.mark.parametrize(
    "change", [{"target": "device"}, {"app_version_id": "other"}, {"org_id": "acme"}]
)
def test_another_target_build_or_org_means_another_batch(change: dict[str, str]) -> None:
    assert domain.submit(spec(), T0).batch_id != domain.submit(spec(**change), T0).batch_id


def test_an_idempotency_key_names_the_same_job_every_time() -> None:
    first = domain.submit(spec(idempotency_key="ci-run-42"), T0)
    again = domain.submit(spec(idempotency_key="ci-run-42"), T0)
    fresh = domain.submit(spec(), T0)
    assert first.job_id == again.job_id != fresh.job_id
    assert domain.is_job_id(first.job_id)
    assert domain.is_job_id(fresh.job_id)


def test_job_ids_cannot_smuggle_subject_tokens() -> None:
    assert not domain.is_job_id("j>")
    assert not domain.is_job_id("j1234.abc")


def test_unknown_fields_and_bad_values_name_the_field() -> None:
    with pytest.raises(msgspec.ValidationError, match="colour"):
        msgspec.convert({**msgspec.structs.asdict(spec()), "colour": "red"}, api.JobSpec)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.target"):
        spec(target="phone")
    with pytest.raises(msgspec.ValidationError, match=r"\$\.test_path"):
        spec(test_path="tests/a.js; rm -rf /")


def test_cancelling_a_finished_job_is_refused() -> None:
    state = lifecycle.fold([(1, submitted()), (2, assigned()), (3, started())])
    assert state is not None
    cancelled = lifecycle.evolve(state, domain.cancel(state, T0))
    with pytest.raises(domain.JobFinished, match="already cancelled"):
        domain.cancel(cancelled, T0)


def test_assignment_carries_the_attempt_and_batch() -> None:
    state = lifecycle.start(submitted(), 1)
    event = domain.assign(state, ev.AgentId("a7"), T0)
    assert (event.agent_id, event.batch_id, event.attempt) == ("a7", "b1", 1)
