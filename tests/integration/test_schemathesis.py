"""Schemathesis against the live API: requests generated from the served `/openapi.json`,
valid and invalid, to every operation, with a token, get no 5xx and no answer that the
document does not describe (status, content type, headers, body schema)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from infra import events as ev
from tests.stack import JOB, running_stack, simulated_agents

if TYPE_CHECKING:
    from schemathesis import APIOperation, Case, CheckFunction

    from infra import embedded
    from tests.stack import Stack

    Operation = APIOperation[Any, Any, Any, Any]

CHECKS: list[CheckFunction] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 40
"""Cases per operation and generation mode."""
FEW_EXAMPLES = {"POST /ops/replay": 10, "POST /ops/verify": 10}
"""Each case rebuilds every read model."""
CONFIG = {
    "request-timeout": 10.0,
    # The test sends its own token; answers to no token or a bad one are test_auth's.
    "generation": {"with-security-parameters": False},
}


@dataclass(frozen=True)
class Known:
    """Ids that exist, for path parameters: a generated id only ever finds the 404."""

    jobs: tuple[str, ...]
    finished: tuple[str, ...]
    """Jobs that ended: following their logs ends at once instead of waiting for a run."""
    tokens: tuple[str, ...]
    """Tokens that may be revoked: never the one the cases are sent with."""

    def for_path(self, operation: Operation) -> list[tuple[str, tuple[str, ...]]]:
        """Existing ids for each path parameter of `operation`."""
        jobs = self.finished if operation.path == "/jobs/{job_id}/logs" else self.jobs
        ids = {"job_id": jobs, "token_id": self.tokens}
        return [(name, ids[name]) for name in ids if f"{{{name}}}" in operation.path]


@dataclass
class Outcome:
    """What one operation's cases got: their statuses, and the report of a failure."""

    statuses: Counter[int] = field(default_factory=Counter)
    failure: str | None = None


async def seed(stack: Stack) -> Known:
    """Jobs in every kind of state, with attempts, logs, batches and an agent behind them,
    and two tokens to revoke."""
    ran = [
        await stack.submit(**{**JOB, "test_path": path, "retries": retries})
        for path, retries in [("tests/a.spec.js", 0), ("tests/b_fail.spec.js", 1)]
    ]
    await stack.wait_all([job.job_id for job in ran])
    # No agent serves devices: these stay queued until a case cancels them.
    queued = [await stack.submit(**{**JOB, "target": "device", "test_path": p}) for p in "cdef"]
    status, _ = await stack.request("DELETE", f"/jobs/{queued[0].job_id}")
    assert status == 200
    tokens = []
    for spec in [{"org_id": "acme", "role": "submit"}, {"role": "admin", "name": "spare"}]:
        status, body = await stack.request("POST", "/tokens", spec)
        assert status == 201, body
        tokens.append(body["details"]["token_id"])
    await stack.settled()
    return Known(
        jobs=tuple(job.job_id for job in [*ran, *queued]),
        finished=(ran[0].job_id, ran[1].job_id, queued[0].job_id),
        tokens=tuple(tokens),
    )


def modes(operation: Operation) -> list[GenerationMode]:
    """Valid requests, and invalid ones where there is an input to break (a path
    parameter is any string, so there is none to break there)."""
    if len(operation.query) or len(operation.body):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def fuzz(
    operation: Operation,
    mode: GenerationMode,
    known: Known,
    base_url: str,
    headers: dict[str, str],
) -> Outcome:
    """Send one operation's cases (blocking) and check every answer."""
    outcome = Outcome()
    # About half the cases name an existing job or token instead of the generated id.
    existing = {name: st.sampled_from(ids) | st.none() for name, ids in known.for_path(operation)}

    @settings(
        max_examples=FEW_EXAMPLES.get(operation.label, EXAMPLES),
        derandomize=True,
        database=None,
        deadline=None,
        # Bulk bodies (up to 1000 jobs) are slow and big to generate: on a loaded CI
        # machine that must not fail the run.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode), ids=st.fixed_dictionaries(existing))
    def run(case: Case[Operation], ids: dict[str, str | None]) -> None:
        chosen = {name: value for name, value in ids.items() if value is not None}
        if chosen:
            case.path_parameters = {**case.path_parameters, **chosen}
        response = case.call(base_url=base_url, headers=headers)
        outcome.statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    # Reported with its request once every operation ran; check failures come as a group.
    except (schemathesis.errors.FailureGroup, Exception) as exc:  # noqa: BLE001
        outcome.failure = f"{operation.label} ({mode.value}): {exc}"
    return outcome


async def test_generated_requests_get_no_server_error_and_only_documented_answers(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, simulated_agents(1, (ev.Target.EMULATOR,))) as stack:
        known = await seed(stack)
    # Again without agents, so that no generated job runs and no log follow waits on one;
    # and without a rate limit, so that every case reaches its handler.
    async with running_stack(qg_servers, [], rate_limit_rps=0.0) as stack:
        status, body = await stack.request("POST", "/tokens", {"role": "admin", "name": "fuzz"})
        assert status == 201, body
        headers = {"Authorization": f"Bearer {body['token']}"}
        status, doc = await stack.request("GET", "/openapi.json")
        assert status == 200
        config = schemathesis.Config.from_dict(CONFIG)
        schema = schemathesis.openapi.from_dict(doc, config=config)
        operations = [
            schema[path][method] for path in doc["paths"] for method in doc["paths"][path]
        ]
        outcomes: dict[tuple[str, GenerationMode], Outcome] = {}
        for operation in operations:
            for mode in modes(operation):
                # The API answers on this event loop; the blocking client runs in a thread.
                outcomes[operation.label, mode] = await asyncio.to_thread(
                    fuzz, operation, mode, known, stack.api_url, headers
                )
    failures = [o.failure for o in outcomes.values() if o.failure is not None]
    assert not failures, "\n\n".join(failures)
    # A revoked or throttled token would get only documented 401s or 429s: make sure the
    # valid cases of every operation did reach its handler.
    unserved = {
        label: dict(outcome.statuses)
        for (label, mode), outcome in outcomes.items()
        if mode is GenerationMode.POSITIVE and not any(200 <= s < 300 for s in outcome.statuses)
    }
    assert not unserved
