"""Command templates: checked when the configuration is built, one argument per argument."""

from __future__ import annotations

import pytest

from agent.runners.command import TEST_PLACEHOLDERS, CommandConfig, render


@pytest.mark.parametrize(
    ("install", "test", "complaint"),
    [
        ((), ("run", "{test_pth}"), "unknown placeholder {test_pth}"),
        (("install", "{test_path}"), ("run",), "unknown placeholder {test_path}"),
        ((), ("run", "{job_id!r}"), "placeholder {job_id} in '{job_id!r}' takes no"),
        ((), ("run", "{target:>9}"), "placeholder {target} in '{target:>9}' takes no"),
        ((), ("run", "{target.value}"), "unknown placeholder {target.value}"),
        ((), ("run", "{0}"), "unknown placeholder {0}"),
        ((), ("run", "{test_path"), "bad template argument"),
        ((), (), "the test command template is empty"),
    ],
)
def test_a_bad_template_is_refused_when_the_configuration_is_built(
    install: tuple[str, ...], test: tuple[str, ...], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint.replace("{", r"\{").replace("[", r"\[")):
        CommandConfig(install=install, test=test)


def test_every_placeholder_is_replaced_and_braces_can_be_escaped() -> None:
    template = ("x", "--project={target}", "{org_id}/{app_version_id}/{job_id}", "{{literal}}")
    values = {"target": "emulator", "org_id": "o", "app_version_id": "v1", "job_id": "j"}
    assert render(template, values) == ["x", "--project=emulator", "o/v1/j", "{literal}"]
    assert CommandConfig(test=tuple(f"{{{name}}}" for name in TEST_PLACEHOLDERS))


@pytest.mark.parametrize(
    "path", ["tests/a b.spec.js", "a.js; rm -rf /", "$(touch pwned)", "x' \"y", "{job_id}"]
)
def test_a_job_field_stays_one_argument_and_is_never_reinterpreted(path: str) -> None:
    argv = render(
        ("npx", "appwright", "test", "{test_path}", "--x={test_path}"), {"test_path": path}
    )
    assert argv == ["npx", "appwright", "test", path, f"--x={path}"]
