"""The AppWright runner: `npx appwright test <file> --project <project>` for each job, the
build fetched once per batch from a configured source, the verdict from the exit code and
Playwright's JSON report.

AppWright's binary runs `npx playwright <args>` after joining its arguments with spaces and
splitting them again, and Playwright reads a file argument as an unanchored, case-insensitive
regular expression (`login.spec.ts` would also run `admin-login.spec.ts`; `c++.spec.ts` is a
syntax error). So the test path is passed as an escaped, anchored `/regex/` without spaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import re
import string
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import msgspec

from agent.runners import InstallFailed, Output, RunnerError, TestOutcome, command, process
from infra import events as ev

if TYPE_CHECKING:
    from infra.lifecycle import JobState

BUILD_PATH_ENV = "QG_BUILD_PATH"
"""Names the installed build for the test; appwright.config.ts reads it as `buildPath`."""
_REPORT_ENVS = ("PLAYWRIGHT_JSON_OUTPUT_NAME", "PLAYWRIGHT_JSON_OUTPUT_FILE")
"""Older Playwright reads only _NAME; newer prefers _FILE, so both name the same file."""
_DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
"""No total limit (builds are large; the agent bounds the whole install), only stalls."""
_REGEX_SPECIAL = re.compile(r"[\\^$.*+?()[\]{}|/]")
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class AppwrightConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the AppWright project is, which project runs each target, where builds come
    from; checked when built."""

    project_dir: str
    """Holds appwright.config.ts and node_modules; the test's working directory."""
    projects: dict[str, str]
    """qgjob target (`emulator`, `device`, `browserstack`) to AppWright project name."""
    build_source: str
    """A local path (relative to `project_dir`) or an http(s) URL naming {app_version_id}
    and optionally {org_id} and {target}, e.g. `builds/{app_version_id}.apk`."""
    build_dir: str | None = None
    """Where downloaded builds go; None: a fresh temporary directory."""
    npx: tuple[str, ...] = ("npx",)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """Added to the agent's own environment."""
    secret_env: tuple[str, ...] = ("BROWSERSTACK_USERNAME", "BROWSERSTACK_ACCESS_KEY")
    """Variables whose values are masked as `***` in test output and reasons."""
    kill_grace_s: float = 5.0
    """Between SIGTERM and SIGKILL when a test must be stopped."""
    output_limit_bytes: int = 1 << 20
    """How much of a test's output (the end of it) is kept for error reasons."""

    def __post_init__(self) -> None:
        known = {t.value for t in ev.Target}
        if not self.projects:
            raise ValueError("no target is mapped to an AppWright project")
        for target, name in self.projects.items():
            if target not in known:
                raise ValueError(f"unknown target {target!r}; known: {', '.join(sorted(known))}")
            # AppWright splits its arguments at spaces, and a leading dash makes an option.
            if not name or name.startswith("-") or any(c.isspace() for c in name):
                raise ValueError(f"bad AppWright project name {name!r} for target {target}")
        command.check_template([self.build_source], command.INSTALL_PLACEHOLDERS)
        named = {f for _, f, _, _ in string.Formatter().parse(self.build_source) if f}
        if "app_version_id" not in named:
            raise ValueError(f"the build source {self.build_source!r} must name {{app_version_id}}")
        scheme = urlsplit(self.build_source).scheme
        if "://" in self.build_source and scheme not in ("http", "https"):
            raise ValueError(f"the build source must be a path or an http(s) URL, not {scheme}:")
        if not self.npx:
            raise ValueError("the npx command is empty")


class AppwrightRunner:
    """Fetches builds and runs AppWright tests as real processes."""

    name = "appwright"

    def __init__(self, config: AppwrightConfig) -> None:
        self._config = config
        self._build_dir = None if config.build_dir is None else Path(config.build_dir)
        self._builds: dict[tuple[str, str, str], Path] = {}
        """The installed build of each (org, app version, target)."""

    async def install(self, org_id: str, app_version_id: str, target: str) -> None:
        """Fetch the build (or find it on disk) and remember its path for the batch's tests."""
        try:
            self._project(target)
        except RunnerError as exc:
            raise InstallFailed(str(exc)) from exc
        values = {"org_id": org_id, "app_version_id": app_version_id, "target": target}
        for key, value in values.items():
            # The API admits none of these, but a value must never reach another file or URL.
            if value in ("", ".", "..") or any(c in value for c in "/\\\0"):
                raise InstallFailed(f"{key} {value!r} cannot name a build")
        source = self._config.build_source
        if _is_url(source):
            url = command.render([source], {k: quote(v, safe="") for k, v in values.items()})[0]
            root = await self._builds_root()
            path = root.joinpath(*map(_component, values.values()), _filename(url))
            if not path.resolve().is_relative_to(root.resolve()):  # cannot happen; never allow
                raise InstallFailed(f"build path {path} leaves the build directory")
            await _download(url, path)
        else:
            path = Path(self._config.project_dir) / command.render([source], values)[0]
            if not await asyncio.to_thread(path.exists):
                raise InstallFailed(f"build not found: {path}")
        self._builds[(org_id, app_version_id, target)] = path

    async def run_test(self, job: JobState, output: Output) -> TestOutcome:
        """Run the job's test file on the target's AppWright project."""
        target = job.target.value
        project = self._project(target)
        build = self._builds.get((job.org_id, job.app_version_id, target))
        if build is None:
            raise RunnerError(f"build {job.app_version_id} for {target} is not installed here")
        config = self._config
        argv = [*config.npx, "appwright", "test", file_filter(job.test_path)]
        argv += ["--project", project, "--reporter=line,json"]
        env = {**os.environ, **config.env, BUILD_PATH_ENV: str(build)}
        env.pop("PLAYWRIGHT_JSON_OUTPUT_DIR", None)
        secrets = [env[name] for name in config.secret_env if env.get(name)]
        with tempfile.TemporaryDirectory(prefix="qgjob-appwright-") as scratch:
            report_path = Path(scratch) / "report.json"
            env.update(dict.fromkeys(_REPORT_ENVS, str(report_path)))
            started = time.monotonic()
            finished = await process.execute(
                argv,
                cwd=config.project_dir,
                env=env,
                kill_grace_s=config.kill_grace_s,
                output_limit_bytes=config.output_limit_bytes,
                output=output,
                secrets=secrets,
            )
            duration = time.monotonic() - started
            report = await asyncio.to_thread(_read_optional, report_path)
        masker = process.Masker(secrets)
        try:
            reason = verdict(finished, report)
        except RunnerError as exc:
            raise RunnerError(masker.mask_text(str(exc))) from None
        if reason is None:
            return TestOutcome(passed=True, duration_s=duration)
        return TestOutcome(passed=False, duration_s=duration, reason=masker.mask_text(reason))

    def _project(self, target: str) -> str:
        try:
            return self._config.projects[target]
        except KeyError:
            mapped = ", ".join(sorted(self._config.projects))
            raise RunnerError(
                f"no AppWright project for target {target!r} (mapped: {mapped})"
            ) from None

    async def _builds_root(self) -> Path:
        if self._build_dir is None:
            self._build_dir = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix="qgjob-builds-")
            )
        return self._build_dir


def file_filter(test_path: str) -> str:
    """Playwright's file argument matching exactly `test_path`: an escaped `/regex/` anchored
    at a path component and the end, with no spaces (`\\x20`) for AppWright to split at."""
    path = posixpath.normpath(test_path)
    anchor = "^" if path.startswith("/") else r"(?:^|\/)"
    body = _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(), path).replace(" ", r"\x20")
    return f"/{anchor}{body}$/"


# Playwright's JSON reporter, only what the verdict needs; other fields are ignored.
class _Error(msgspec.Struct):
    message: str = ""


class _Result(msgspec.Struct):
    status: str = ""
    error: _Error | None = None


class _Test(msgspec.Struct):
    status: str = ""
    """expected | unexpected | flaky | skipped"""
    results: list[_Result] = msgspec.field(default_factory=list)


class _Spec(msgspec.Struct):
    title: str = ""
    tests: list[_Test] = msgspec.field(default_factory=list)


class _Suite(msgspec.Struct):
    title: str = ""
    specs: list[_Spec] = msgspec.field(default_factory=list)
    suites: list[_Suite] = msgspec.field(default_factory=list)


class _Stats(msgspec.Struct):
    expected: int = 0
    unexpected: int = 0
    flaky: int = 0
    skipped: int = 0


class _Report(msgspec.Struct):
    stats: _Stats
    suites: list[_Suite] = msgspec.field(default_factory=list)
    errors: list[_Error] = msgspec.field(default_factory=list)


_report_decoder = msgspec.json.Decoder(_Report)


def verdict(finished: process.Finished, report: bytes | None) -> str | None:
    """None when the test passed, why when it failed; RunnerError when AppWright reached no
    verdict. AppWright exits 1 both for failed tests and for a failed setup (no device, no
    build), so a run counts only when the report shows tests that ran."""
    if finished.returncode not in (0, 1):
        raise RunnerError(f"appwright ended with {finished.describe(lines=3)}")
    if report is None:
        raise RunnerError(f"appwright wrote no report; {finished.describe(lines=3)}")
    try:
        parsed = _report_decoder.decode(report)
    except msgspec.DecodeError as exc:
        raise RunnerError(f"unreadable appwright report ({exc}); {finished.describe()}") from exc
    stats = parsed.stats
    problem = next((line for e in parsed.errors if (line := _first_line(e.message))), "")
    if stats.expected + stats.unexpected + stats.flaky == 0:
        skipped = f" ({stats.skipped} skipped)" if stats.skipped else ""
        raise RunnerError(f"no test ran{skipped}: {problem or finished.describe(lines=3)}")
    if finished.returncode == 0 and stats.unexpected == 0:
        return None  # flaky tests passed on Playwright's own retry
    if finished.returncode == 1 and stats.unexpected > 0:
        return _first_failure(parsed.suites, []) or f"{stats.unexpected} test(s) failed"
    raise RunnerError(
        f"appwright exit code {finished.returncode} with {stats.unexpected} failed test(s): "
        f"{problem or finished.describe(lines=3)}"
    )


def _first_failure(suites: list[_Suite], titles: list[str]) -> str | None:
    """`file > describe > test: first line of its error` of the first unexpected test."""
    for suite in suites:
        path = [*titles, suite.title] if suite.title else titles
        for spec in suite.specs:
            for test in spec.tests:
                if test.status != "unexpected":
                    continue
                # The last result is the final attempt; its error says why the test failed.
                message = next(
                    (
                        line
                        for r in reversed(test.results)
                        if r.error is not None and (line := _first_line(r.error.message))
                    ),
                    test.results[-1].status if test.results else "failed",
                )
                return f"{' > '.join([*path, spec.title])}: {message}"[: 2 * process.REASON_CHARS]
        if (found := _first_failure(suite.suites, path)) is not None:
            return found
    return None


def _first_line(message: str) -> str:
    lines = (line.strip() for line in process.plain(message).splitlines())
    return next((line for line in lines if line), "")[: process.REASON_CHARS]


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _is_url(source: str) -> bool:
    return urlsplit(source).scheme in ("http", "https")


def _component(value: str) -> str:
    """A checked value as one directory name, never hidden."""
    quoted = quote(value, safe="")
    return "%2E" + quoted[1:] if quoted.startswith(".") else quoted


def _filename(url: str) -> str:
    """The download's file name, from the URL's last path segment (Appium needs its
    extension: .apk, .ipa, .zip)."""
    name = _FILENAME_UNSAFE.sub("_", posixpath.basename(unquote(urlsplit(url).path)))
    return name.lstrip(".") or "build"


def _shown(url: str) -> str:
    """The URL without credentials, query or fragment, for messages."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


async def _download(url: str, path: Path) -> None:
    """Stream `url` to `path` through a temporary file renamed into place, so a build file
    is either complete or absent; InstallFailed names the status and the shown URL."""
    shown = _shown(url)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        async with (
            aiohttp.ClientSession(timeout=_DOWNLOAD_TIMEOUT) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise InstallFailed(f"HTTP {response.status} {response.reason or ''} from {shown}")
            file = await asyncio.to_thread(partial.open, "wb")
            try:
                async for chunk in response.content.iter_chunked(1 << 20):
                    await asyncio.to_thread(file.write, chunk)
            finally:
                await asyncio.to_thread(file.close)
        await asyncio.to_thread(os.replace, partial, path)
    except aiohttp.ClientConnectorError as exc:
        raise InstallFailed(f"cannot download {shown}: cannot connect") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Not str(exc): aiohttp's messages may carry the full URL with its query.
        raise InstallFailed(f"cannot download {shown}: {type(exc).__name__}") from exc
    except OSError as exc:
        raise InstallFailed(f"cannot store {shown} as {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
