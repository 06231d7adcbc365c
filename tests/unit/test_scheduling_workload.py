"""The scheduling benchmark's workload and lower bounds (a smoke test: no servers)."""

from __future__ import annotations

import pytest

from tests.bench.schedule_workload import Shape, Submission, Workload, generate


def test_the_same_seed_makes_the_same_workload_and_fleet() -> None:
    shape = Shape().quick()
    assert generate(shape) == generate(shape)


def test_a_workload_has_every_job_once_and_a_fleet_for_every_target() -> None:
    workload = generate(Shape().quick())
    paths = [job["test_path"] for job in workload.jobs]
    assert len(paths) == len(set(paths)) == Shape().quick().jobs
    served = {target for targets, _ in workload.fleet for target in targets}
    assert {job["target"] for job in workload.jobs} <= served
    assert workload.agents == Shape().quick().agents


def test_the_bounds_count_one_install_per_batch_and_rise_with_the_cost_of_a_test() -> None:
    workload = generate(Shape().quick())
    assert workload.install_bound() == len(
        {(j["org_id"], j["app_version_id"], j["target"]) for j in workload.jobs}
    )
    assert workload.makespan_bound(test_s=0.08) > workload.makespan_bound()


def test_work_arriving_late_for_one_target_bounds_by_that_targets_agents() -> None:
    """Device work arriving at 5 s cannot go to the idle emulator agent: no schedule ends
    before 5 s plus its install and tests on the one device agent."""
    shape = Shape(test_s=0.04, install_s=0.8)

    def jobs(target: str) -> tuple[dict[str, object], ...]:
        return tuple(
            {"org_id": "acme", "app_version_id": "v1", "target": target, "priority": 3}
            for _ in range(10)
        )

    submissions = (Submission(0.0, jobs("emulator")), Submission(5.0, jobs("device")))
    fleet = ((("emulator",), 1), (("device",), 1))
    workload = Workload(shape, submissions, fleet)
    assert workload.makespan_bound() == pytest.approx(5.0 + 0.8 + 10 * 0.04)


def test_the_naive_baseline_runs_each_job_as_its_own_batch_at_one_priority() -> None:
    naive = generate(Shape().quick()).naive()
    assert naive.install_bound() == len(naive.jobs)
    assert {job["priority"] for job in naive.jobs} == {3}
