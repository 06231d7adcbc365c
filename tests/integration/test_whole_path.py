"""Submit, group, install once, run, verdict: the whole path through real servers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from infra import embedded


async def test_jobs_of_one_build_share_one_install(qg_servers: embedded.Servers) -> None:
    async with running_stack(qg_servers, simulated_agents(1)) as stack:
        first = [
            await stack.submit(app_version_id="v1", test_path=f"tests/a{i}.spec.js")
            for i in range(3)
        ]
        other = await stack.submit(app_version_id="v2", test_path="tests/b.spec.js")
        views = await stack.wait_all([j.job_id for j in [*first, other]])
        assert [v.status for v in views] == ["passed"] * 4
        assert len({v.batch_id for v in views[:3]}) == 1
        assert views[3].batch_id != views[0].batch_id
        _, batches = await stack.request("GET", "/batches")
        assert sorted(b["installs"] for b in batches["batches"]) == [1, 1]
