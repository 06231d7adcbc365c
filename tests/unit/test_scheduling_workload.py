"""The scheduling benchmark's workload and lower bounds (a smoke test: no servers)."""

from __future__ import annotations

from tests.bench.schedule_workload import Shape, generate


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


def test_the_naive_baseline_runs_each_job_as_its_own_batch_at_one_priority() -> None:
    naive = generate(Shape().quick()).naive()
    assert naive.install_bound() == len(naive.jobs)
    assert {job["priority"] for job in naive.jobs} == {3}
