"""`qgjob up`'s supervision: a component that exits unexpectedly comes back, and stopping
stops the components one at a time, the last started first."""

from __future__ import annotations

import asyncio

from cli.supervisor import Supervisor


class Component:
    """A component that records its runs and, while `failing`, fails at once; stopping
    takes it `stopping` turns of the event loop."""

    def __init__(self, name: str, log: list[str], failing: int = 0, stopping: int = 0) -> None:
        self.name = name
        self.log = log
        self.failing = failing
        self.stopping = stopping
        self.runs = 0
        self.running = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        if self.failing:
            self.failing -= 1
            raise ConnectionError(f"{self.name} lost its database")
        self.running.set()
        await stop.wait()
        for _ in range(self.stopping):
            await asyncio.sleep(0)
        self.log.append(f"{self.name} stopped")


async def test_a_component_that_fails_is_started_again_and_its_siblings_keep_running() -> None:
    log: list[str] = []
    steady, flaky = Component("orchestrator", log), Component("projectors", log, failing=2)
    components = Supervisor()
    components.start(steady.name, steady.run)
    components.start(flaky.name, flaky.run)
    await asyncio.wait_for(flaky.running.wait(), 10)
    await components.stop()
    assert (steady.runs, flaky.runs) == (1, 3)
    assert isinstance(components.failure, ConnectionError)
    assert log == ["projectors stopped", "orchestrator stopped"]


async def test_stopping_stops_the_last_started_first_each_after_the_one_before() -> None:
    log: list[str] = []
    started = [
        Component("projectors", log),
        Component("orchestrator", log),
        Component("agents", log, stopping=5),  # slowest to stop, and still stopped first
    ]
    components = Supervisor()
    for component in started:
        components.start(component.name, component.run)
    for component in started:
        await asyncio.wait_for(component.running.wait(), 10)
    await components.stop()
    assert log == ["agents stopped", "orchestrator stopped", "projectors stopped"]
    assert components.failure is None
