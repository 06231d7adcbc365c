"""The README's tour, run as a user would: the `qgjob` CLI in a subprocess against
`qgjob up`, checking output and exit codes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.acceptance.conftest import Up

SUBMIT = [
    "submit",
    "--org-id=qualgent",
    "--app-version-id=xyz123",
    "--test=tests/onboarding.spec.js",
    "--target=emulator",
    "--priority=5",
]


def test_submit_prints_the_job_id_and_status_shows_it(up: Up) -> None:
    submitted = up.qgjob(*SUBMIT)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("j")
    for form in (["status", f"--job-id={job_id}"], ["status", job_id]):
        shown = up.qgjob(*form)
        assert shown.returncode == 0, shown.stderr
        assert job_id in shown.stdout
        assert "xyz123" in shown.stdout


def test_wait_exits_0_when_every_test_passed(up: Up) -> None:
    ids = [up.qgjob(*SUBMIT).stdout.strip() for _ in range(3)]
    waited = up.qgjob("wait", *ids, "--timeout=300")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert waited.stdout.count("passed") >= 3


def test_wait_exits_1_when_a_test_failed(up: Up) -> None:
    ok = up.qgjob(*SUBMIT).stdout.strip()
    bad = up.qgjob(*SUBMIT[:3], "--test=tests/login_fail.spec.js", "--target=emulator")
    waited = up.qgjob("wait", ok, bad.stdout.strip(), "--timeout=300")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    assert "failed" in waited.stdout


def test_submit_wait_gives_the_verdict_in_one_command(up: Up) -> None:
    result = up.qgjob(*SUBMIT, "--test=tests/cart.spec.js", "--wait", "--timeout=300")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.split()) >= 2, "both job ids are printed"


def test_wait_exits_2_on_timeout(up: Up) -> None:
    nobody = up.qgjob(*SUBMIT[:3], "--test=tests/a.spec.js", "--target=browserstack")
    waited = up.qgjob("wait", nobody.stdout.strip(), "--timeout=1")
    assert waited.returncode == 2
    assert "timed out" in waited.stderr


def test_json_output_is_the_job(up: Up) -> None:
    result = up.qgjob(*SUBMIT, "--json")
    job = json.loads(result.stdout)
    assert (job["status"], job["priority"], job["target"]) == ("queued", 5, "emulator")


def test_several_tests_submit_several_jobs_in_one_batch(up: Up) -> None:
    result = up.qgjob(
        *SUBMIT[:3],
        "--test=tests/x.spec.js",
        "--test=tests/y.spec.js",
        "--target=device",
        "--priority=high",
        "--json",
    )
    jobs = json.loads(result.stdout)
    assert [j["test_path"] for j in jobs] == ["tests/x.spec.js", "tests/y.spec.js"]
    assert len({j["batch_id"] for j in jobs}) == 1
    assert {j["priority"] for j in jobs} == {4}


def test_lists_show_jobs_queues_and_agents(up: Up) -> None:
    up.qgjob(*SUBMIT, "--wait")
    listed = up.qgjob("jobs", "list", "--org-id=qualgent", "--status=passed", "--limit=5", "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)["jobs"]
    assert jobs
    assert {j["status"] for j in jobs} == {"passed"}
    queue = up.qgjob("queue", "status")
    assert queue.returncode == 0, queue.stderr
    agents = json.loads(up.qgjob("agents", "list", "--json").stdout)["agents"]
    assert {a["targets"][0] for a in agents} == {"emulator", "device"}


def test_user_mistakes_are_one_line_and_exit_2(up: Up) -> None:
    cases = [
        [*SUBMIT[:-1], "--priority=soon"],
        [*SUBMIT[:4], "--target=phone"],
        ["status", "j00000000000000000000"],
        ["status", "not-a-job"],
    ]
    for args in cases:
        result = up.qgjob(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unreachable_server_is_one_line_and_exit_2(up: Up) -> None:
    result = up.qgjob("status", "j00000000000000000000", "--api-url=http://127.0.0.1:9")
    assert result.returncode == 2
    assert "cannot reach" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_logs_prints_a_finished_jobs_output_and_follow_ends_with_the_test(up: Up) -> None:
    job_id = up.qgjob(*SUBMIT[:3], "--test=tests/login.spec.js", "--target=emulator").stdout
    followed = up.qgjob("logs", job_id.strip(), "--follow")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.startswith("$ simulated test tests/login.spec.js on emulator\n")
    printed = up.qgjob("logs", job_id.strip())
    assert printed.stdout == followed.stdout
    unknown = up.qgjob("logs", "j" + "x" * 22, "--attempt=2")
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1


def test_ops_replay_and_verify_rebuild_the_read_models_from_the_stream(up: Up) -> None:
    up.qgjob(*SUBMIT, "--wait")
    replayed = up.qgjob("ops", "replay")
    assert replayed.returncode == 0, replayed.stderr
    assert "jobs" in replayed.stdout
    verified = up.qgjob("ops", "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert {p["projection"]: p["differing"] for p in report["projections"]} == {
        "jobs": 0,
        "batches": 0,
        "agents": 0,
    }
    unknown = up.qgjob("ops", "verify", "--projection=nope")
    assert (unknown.returncode, unknown.stderr.count("\n")) == (2, 1)


def test_status_shows_each_attempt_of_a_retried_job(up: Up) -> None:
    flaky = up.qgjob(
        *SUBMIT[:3], "--test=tests/pay_fail.spec.js", "--target=emulator", "--retries=1"
    )
    job_id = flaky.stdout.strip()
    assert up.qgjob("wait", job_id).returncode == 1
    shown = up.qgjob("status", job_id)
    assert "attempts" in shown.stdout
    rows = [line.split() for line in shown.stdout.splitlines() if line.strip()[:2] in ("1 ", "2 ")]
    assert [(row[0], row[2]) for row in rows] == [("1", "retried"), ("2", "failed")]


def test_cancel_every_job_of_an_app_build_in_one_command(up: Up) -> None:
    queued = up.qgjob(
        *SUBMIT[:2],
        "--app-version-id=never-run",
        "--test=a.js",
        "--test=b.js",
        "--target=browserstack",
    )
    ids = queued.stdout.split()
    done = up.qgjob("jobs", "cancel", "--org-id=qualgent", "--app-version-id=never-run")
    assert done.returncode == 0, done.stderr
    assert "cancelled 2 job(s)" in done.stdout
    assert all(job_id in done.stdout for job_id in ids)
    assert up.qgjob("wait", *ids).returncode == 2, "cancelled jobs give no verdict"
    both = up.qgjob("jobs", "cancel", ids[0], "--batch-id=b")
    assert (both.returncode, both.stderr.count("\n")) == (2, 1)


def test_an_org_token_from_ops_tokens_create_works_until_it_is_revoked(up: Up) -> None:
    created = up.qgjob("ops", "tokens", "create", "--org-id=qualgent", "--name=ci", "--json")
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    as_org = {**up.env, "QG_TOKEN": issued["token"]}
    submitted = up.run_as(as_org, *SUBMIT)
    assert submitted.returncode == 0, submitted.stderr
    other = up.run_as(as_org, "submit", "--org-id=initech", *SUBMIT[2:])
    assert (other.returncode, other.stderr.count("\n")) == (2, 1)
    assert "qualgent only" in other.stderr
    revoked = up.qgjob("ops", "tokens", "revoke", issued["details"]["token_id"])
    assert revoked.returncode == 0, revoked.stderr
    refused = up.run_as(as_org, "status", submitted.stdout.strip())
    assert (refused.returncode, refused.stderr.strip()) == (
        2,
        "qgjob: error: the token has been revoked",
    )
