"""CI reports of waited-for jobs: JUnit XML for test reporters, Markdown for a job summary.

One `<testcase>` per job, named by its test path. Its `classname` is
`<app_version_id>.<target>`, target last: Jenkins splits a classname at its last dot into
package and class, so the tests of one build group under the build and then under the
target, whatever dots the build id itself contains; GitHub and GitLab reporters show the
classname beside the test name.
"""

from __future__ import annotations

import enum
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC
from pathlib import Path

from infra import api
from infra.events import TERMINAL_STATUSES, JobStatus


class Verdict(enum.StrEnum):
    """How a job counts in a report; the JUnit element it gets is in brackets."""

    PASSED = "passed"
    FAILED = "failed"  # <failure>: the test ran and failed
    DEAD = "dead"  # <error>: no test verdict, the infrastructure gave up on the job
    TIMED_OUT = "timed out"  # <error type="Timeout">: not finished when the wait ended
    CANCELLED = "cancelled"  # <skipped>


_EMOJI = {
    Verdict.PASSED: "✅",
    Verdict.FAILED: "❌",
    Verdict.DEAD: "💥",
    Verdict.TIMED_OUT: "⏱️",
    Verdict.CANCELLED: "⏭️",
}
# Problems first in the summary table: on a long run, the rows a reader wants are on top.
_SUMMARY_ORDER = [
    Verdict.FAILED,
    Verdict.DEAD,
    Verdict.TIMED_OUT,
    Verdict.CANCELLED,
    Verdict.PASSED,
]

# ANSI escape sequences (CSI such as colours, OSC such as hyperlinks, and the short ones
# such as a reset or a charset switch), which test runners print to terminals and which
# mean nothing in a report.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]*[0-~])")
# Characters XML 1.0 cannot carry at all, not even escaped: a report holding one is
# rejected whole by every parser.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def verdict(job: api.JobView) -> Verdict:
    """How `job` counts in a report: a job that is not terminal has timed out."""
    if job.status not in TERMINAL_STATUSES:
        return Verdict.TIMED_OUT
    return {
        JobStatus.PASSED: Verdict.PASSED,
        JobStatus.FAILED: Verdict.FAILED,
        JobStatus.CANCELLED: Verdict.CANCELLED,
        JobStatus.DEAD: Verdict.DEAD,
    }[job.status]


def clean_text(text: str) -> str:
    """`text` without ANSI escapes and characters XML 1.0 forbids, with `\\n` line ends."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _NOT_XML.sub("", text)


def _one_line(text: str) -> str:
    return " ".join(clean_text(text).split())


def _seconds(value: float | None) -> str:
    return f"{value or 0.0:.3f}"


def _problem(job: api.JobView, kind: Verdict) -> tuple[str, str, str]:
    """The JUnit element, `type` and `message` of a job that failed, died or timed out."""
    reason = _one_line(job.reason or "")
    if kind is Verdict.FAILED:
        return "failure", "TestFailed", reason or "the test failed"
    if kind is Verdict.TIMED_OUT:
        return "error", "Timeout", f"did not finish before the wait timed out ({_state(job)})"
    return "error", "JobDead", reason or "the job is dead: no test verdict"


def _state(job: api.JobView) -> str:
    """`status: running`; an errored job awaits another attempt, and its last error says why."""
    if job.status is JobStatus.ERRORED and job.reason:
        return f"status: errored: {_one_line(job.reason)}"
    return f"status: {job.status.value}"


def _testcase(job: api.JobView, log_tail: str | None) -> ET.Element:
    case = ET.Element(
        "testcase",
        name=job.test_path,
        classname=f"{job.app_version_id}.{job.target.value}",
        file=job.test_path,
        time=_seconds(job.duration_s),
    )
    properties = ET.SubElement(case, "properties")
    facts = {"job_id": job.job_id, "batch_id": job.batch_id, "attempt": str(job.attempt)}
    if job.agent_id is not None:
        facts["agent_id"] = job.agent_id
    for name, value in facts.items():
        ET.SubElement(properties, "property", name=name, value=clean_text(value))
    kind = verdict(job)
    log = clean_text(log_tail) if log_tail else None
    if kind is Verdict.CANCELLED:
        ET.SubElement(case, "skipped", message=_one_line(job.reason or "") or "cancelled")
    elif kind is not Verdict.PASSED:
        element, type_name, message = _problem(job, kind)
        ET.SubElement(case, element, message=message, type=type_name).text = log
        log = None  # it is the failure's text already
    if log is not None:
        ET.SubElement(case, "system-out").text = log
    return case


def junit_xml(
    jobs: Sequence[api.JobView],
    log_tails: Mapping[str, str] | None = None,
    *,
    suite_name: str = "qgjob",
) -> str:
    """A JUnit XML document with one testsuite of one testcase per job.

    `log_tails` maps job ids to the end of their test output, which becomes the text of a
    failure or error (or `system-out` of a passed test). The suite `time` is the sum of the
    test durations and its `timestamp` the first submission, in UTC without a zone, as the
    JUnit schema wants.
    """
    tails = log_tails or {}
    counts = Counter(verdict(job) for job in jobs)
    totals = {
        "tests": str(len(jobs)),
        "failures": str(counts[Verdict.FAILED]),
        "errors": str(counts[Verdict.DEAD] + counts[Verdict.TIMED_OUT]),
        "skipped": str(counts[Verdict.CANCELLED]),
        "time": _seconds(sum(job.duration_s or 0.0 for job in jobs)),
    }
    name = _one_line(suite_name)
    root = ET.Element("testsuites", {"name": name, **totals})
    suite = ET.SubElement(root, "testsuite", {"name": name, **totals})
    if jobs:
        first = min(job.submitted_at for job in jobs).astimezone(UTC)
        suite.set("timestamp", first.strftime("%Y-%m-%dT%H:%M:%S"))
    suite.extend(_testcase(job, tails.get(job.job_id)) for job in jobs)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(
    path: Path,
    jobs: Sequence[api.JobView],
    log_tails: Mapping[str, str] | None = None,
    *,
    suite_name: str = "qgjob",
) -> None:
    """Write `junit_xml(...)` to `path` as UTF-8, creating its folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(jobs, log_tails, suite_name=suite_name), encoding="utf-8")


def _cell(text: str) -> str:
    """A Markdown table cell: one line, `|` escaped, HTML shown rather than interpreted."""
    return _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def _code(text: str) -> str:
    """A Markdown table cell in code style: entities mean nothing there, only `|` is escaped
    (GitHub splits cells before it parses code spans)."""
    return "`" + _one_line(text).replace("`", "'").replace("|", "\\|") + "`"


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def _reason(job: api.JobView, kind: Verdict) -> str:
    if kind is Verdict.TIMED_OUT:
        return f"did not finish ({_state(job)})"
    return job.reason or ""


def markdown_summary(jobs: Sequence[api.JobView], *, title: str = "qgjob") -> str:
    """A Markdown section for `$GITHUB_STEP_SUMMARY`: the counts in a heading, then a
    table of every job, failures first."""
    counts = Counter(verdict(job) for job in jobs)
    parts = [f"{counts[kind]} {kind.value}" for kind in Verdict if counts[kind]]
    heading = f"### {_cell(title)}: {', '.join(parts) or 'no jobs'}"
    if not jobs:
        return heading + "\n"
    lines = [
        heading,
        "",
        "| Status | Test | Target | App version | Duration | Reason |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ordered = sorted(jobs, key=lambda job: _SUMMARY_ORDER.index(verdict(job)))
    for job in ordered:
        kind = verdict(job)
        cells = [
            f"{_EMOJI[kind]} {kind.value}",
            _code(job.test_path),
            job.target.value,
            _cell(job.app_version_id),
            _duration(job.duration_s),
            _cell(_reason(job, kind)),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def append_summary(path: Path, jobs: Sequence[api.JobView], *, title: str = "qgjob") -> None:
    """Append `markdown_summary(...)` to `path` (the file `$GITHUB_STEP_SUMMARY` names)."""
    # A blank line first: other steps may have left a paragraph that would swallow ours.
    with path.open("a", encoding="utf-8") as summary:
        summary.write("\n" + markdown_summary(jobs, title=title))
