"""CI reports: the JUnit XML a test reporter reads back, and the Markdown job summary."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from cli import junit
from infra.events import JobStatus, Target
from tests.unit import factories

if TYPE_CHECKING:
    from pathlib import Path

    from infra import api

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

MakeJob = factories.MakeJobView


@pytest.fixture
def job() -> MakeJob:
    """Jobs of build 1.2.3 (dots, as reporters split class names on them)."""
    return factories.job_views(app_version_id="1.2.3", batch_id="batch-1", submitted_at=T0)


def parse(jobs: list[api.JobView], log_tails: dict[str, str] | None = None) -> ET.Element:
    """The report as a reporter sees it: parsed back from its text."""
    return ET.fromstring(junit.junit_xml(jobs, log_tails, suite_name="appwright"))


def case_of(report: ET.Element, test_path: str) -> ET.Element:
    cases = [case for case in report.iter("testcase") if case.get("name") == test_path]
    assert len(cases) == 1, f"expected one testcase named {test_path}"
    return cases[0]


def outcome_of(case: ET.Element) -> list[str]:
    """The tags that make a testcase anything but a pass."""
    return [child.tag for child in case if child.tag in {"failure", "error", "skipped"}]


def test_suite_counts_failures_errors_and_skips_like_the_verdicts(job: MakeJob) -> None:
    jobs = [
        job(JobStatus.PASSED),
        job(JobStatus.PASSED),
        job(JobStatus.FAILED, reason="exit code 1"),
        job(JobStatus.DEAD, reason="install failed"),
        job(JobStatus.RUNNING),
        job(JobStatus.CANCELLED),
    ]

    report = parse(jobs)

    suites = report.findall("testsuite")
    assert report.tag == "testsuites"
    assert len(suites) == 1
    expected = {"tests": "6", "failures": "1", "errors": "2", "skipped": "1"}
    for element in (report, suites[0]):
        assert {key: element.get(key) for key in expected} == expected
    assert suites[0].get("name") == "appwright"
    assert len(suites[0].findall("testcase")) == 6


def test_testcase_is_named_by_test_path_and_grouped_by_build_then_target(job: MakeJob) -> None:
    report = parse([job(test_path="tests/login.spec.js", target=Target.DEVICE)])

    case = case_of(report, "tests/login.spec.js")
    assert case.get("file") == "tests/login.spec.js"
    # Jenkins takes the last dot as package.class: the build stays whole despite its dots.
    assert case.get("classname", "").rpartition(".") == ("1.2.3", ".", "device")
    assert outcome_of(case) == []


def test_failed_test_carries_its_reason_and_log_tail(job: MakeJob) -> None:
    failed = job(JobStatus.FAILED, test_path="tests/search_fail.spec.js", reason="exit code 1")

    report = parse([failed], {failed.job_id: "expected 3 results\ngot 0\n"})

    failure = case_of(report, "tests/search_fail.spec.js").find("failure")
    assert failure is not None
    assert failure.get("type") == "TestFailed"
    assert failure.get("message") == "exit code 1"
    assert failure.text == "expected 3 results\ngot 0\n"


def test_dead_job_is_an_error_not_a_failure(job: MakeJob) -> None:
    report = parse([job(JobStatus.DEAD, test_path="tests/a.spec.js", reason="install failed")])

    case = case_of(report, "tests/a.spec.js")
    assert outcome_of(case) == ["error"]
    error = case.find("error")
    assert error is not None
    assert error.get("message") == "install failed"


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.ASSIGNED, JobStatus.RUNNING])
def test_unfinished_job_is_a_timeout_error_naming_its_status(
    job: MakeJob, status: JobStatus
) -> None:
    report = parse([job(status, test_path="tests/slow.spec.js")])

    error = case_of(report, "tests/slow.spec.js").find("error")
    assert error is not None
    assert error.get("type") == "Timeout"
    assert error.get("message") == (
        f"did not finish before the wait timed out (status: {status.value})"
    )


def test_timeout_of_an_errored_job_tells_its_last_error(job: MakeJob) -> None:
    report = parse([job(JobStatus.ERRORED, test_path="tests/a.spec.js", reason="agent lost")])

    error = case_of(report, "tests/a.spec.js").find("error")
    assert error is not None
    assert error.get("type") == "Timeout"
    assert "agent lost" in error.get("message", "")


def test_cancelled_job_is_skipped(job: MakeJob) -> None:
    report = parse([job(JobStatus.CANCELLED, test_path="tests/a.spec.js", reason="by alice")])

    case = case_of(report, "tests/a.spec.js")
    assert outcome_of(case) == ["skipped"]
    skipped = case.find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "by alice"


def test_times_are_durations_and_timestamp_is_first_submission_in_utc(job: MakeJob) -> None:
    paris = timezone(timedelta(hours=1))
    jobs = [
        job(test_path="tests/a.spec.js", duration_s=1.25, submitted_at=T0 + timedelta(minutes=5)),
        job(JobStatus.RUNNING, test_path="tests/b.spec.js", submitted_at=T0.astimezone(paris)),
    ]

    report = parse(jobs)

    assert case_of(report, "tests/a.spec.js").get("time") == "1.250"
    assert case_of(report, "tests/b.spec.js").get("time") == "0.000"
    suite = report.find("testsuite")
    assert suite is not None
    assert float(suite.get("time", "")) == pytest.approx(1.25)
    assert suite.get("timestamp") == "2026-01-01T12:00:00"


def test_job_id_attempt_and_agent_are_testcase_properties(job: MakeJob) -> None:
    report = parse([job(job_id="j-42", test_path="tests/a.spec.js", attempt=2, agent_id="emu-1")])

    case = case_of(report, "tests/a.spec.js")
    properties = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
    assert properties["job_id"] == "j-42"
    assert properties["attempt"] == "2"
    assert properties["agent_id"] == "emu-1"
    # Reporters that read testcase children in schema order find <properties> first.
    assert case[0].tag == "properties"


def test_markup_characters_survive_the_round_trip(job: MakeJob) -> None:
    reason = 'expected <Button title="OK"> & got nothing'
    failed = job(JobStatus.FAILED, test_path="tests/a.spec.js", reason=reason)

    report = parse([failed], {failed.job_id: "<html> & \"quotes\" 'too'"})

    failure = case_of(report, "tests/a.spec.js").find("failure")
    assert failure is not None
    assert failure.get("message") == reason
    assert failure.text == "<html> & \"quotes\" 'too'"


def test_ansi_escapes_and_forbidden_control_characters_are_stripped(job: MakeJob) -> None:
    failed = job(JobStatus.FAILED, test_path="tests/a.spec.js", reason="\x1b[31mred\x1b[0m\x07")
    tail = (
        "\x1b[1;31m✗ login\x1b[0m\r\n"
        "\x1b]8;;https://example.test\x07link\x1b]8;;\x07 \x00nul \x08bs \x1bc\x0bvt\x0c\n"
        "progress 50%\rprogress 100%\tdone ünïcödé"
    )

    text = junit.junit_xml([failed], {failed.job_id: tail})

    failure = case_of(ET.fromstring(text), "tests/a.spec.js").find("failure")
    assert failure is not None
    assert failure.get("message") == "red"
    assert failure.text == "✗ login\nlink nul bs vt\nprogress 50%\nprogress 100%\tdone ünïcödé"
    assert "\x1b" not in text


def test_log_tail_of_a_passed_test_goes_to_system_out(job: MakeJob) -> None:
    passed = job(test_path="tests/a.spec.js")

    report = parse([passed], {passed.job_id: "3 assertions"})

    case = case_of(report, "tests/a.spec.js")
    assert outcome_of(case) == []
    assert case.findtext("system-out") == "3 assertions"


def test_write_junit_creates_the_folder_and_writes_utf8(job: MakeJob, tmp_path: Path) -> None:
    path = tmp_path / "reports" / "junit.xml"

    junit.write_junit(path, [job(JobStatus.FAILED, reason="é ✗")], suite_name="s")

    report = ET.parse(path).getroot()
    failure = next(report.iter("failure"))
    assert failure.get("message") == "é ✗"


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of the Markdown table, split on unescaped `|` as GitHub does."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_summary_heading_counts_every_verdict(job: MakeJob) -> None:
    jobs = [job(), job(), job(), job(JobStatus.FAILED), job(JobStatus.QUEUED)]

    heading = junit.markdown_summary(jobs).splitlines()[0]

    assert heading.startswith("#")
    assert heading.endswith("qgjob: 3 passed, 1 failed, 1 timed out")


def test_summary_has_a_row_per_job_with_failures_first(job: MakeJob) -> None:
    jobs = [
        job(test_path="tests/a.spec.js", duration_s=3.21),
        job(
            JobStatus.FAILED,
            test_path="tests/b.spec.js",
            target=Target.DEVICE,
            app_version_id="xyz124",
            duration_s=1.0,
            reason="exit code 1",
        ),
    ]

    rows = table_rows(junit.markdown_summary(jobs))

    assert len(rows) == 2
    status, test, target, version, duration, reason = rows[0]
    assert "failed" in status
    assert "tests/b.spec.js" in test
    assert (target, version, duration, reason) == ("device", "xyz124", "1.0 s", "exit code 1")
    assert "passed" in rows[1][0]
    assert "tests/a.spec.js" in rows[1][1]
    assert rows[1][4] == "3.2 s"


def test_summary_escapes_pipes_and_keeps_each_row_on_one_line(job: MakeJob) -> None:
    reason = "expected a | b\ngot <none>"
    jobs = [job(JobStatus.FAILED, reason=reason), job(JobStatus.RUNNING)]

    rows = table_rows(junit.markdown_summary(jobs))

    assert [len(row) for row in rows] == [6, 6]
    assert rows[0][5] == r"expected a \| b got &lt;none>"
    assert rows[1][5] == "did not finish (status: running)"


def test_summary_of_no_jobs_says_so() -> None:
    assert junit.markdown_summary([]).strip().endswith("qgjob: no jobs")


def test_append_summary_keeps_what_other_steps_wrote(job: MakeJob, tmp_path: Path) -> None:
    path = tmp_path / "step_summary.md"
    path.write_text("## Build\nbuilt in 3 s", encoding="utf-8")

    junit.append_summary(path, [job(), job(JobStatus.FAILED)])

    text = path.read_text(encoding="utf-8")
    assert text.startswith("## Build\nbuilt in 3 s\n")
    assert "qgjob: 1 passed, 1 failed" in text
    assert len(table_rows(text)) == 2
