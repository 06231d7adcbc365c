"""When a batch should be shared by more agents: decided by expected finish time, from
install and test durations observed per target.

With `w` agents on a batch of `n` unfinished jobs of `t` seconds each, it finishes in
about `n * t / w` seconds, plus an install of `i` seconds for agents that do not have
the build. Each extra agent shortens that but installs the build once more, time the
fleet spends on nothing else. So `m` extra agents are worth it when they minimise
`finish(m) + m * i`: the batch finishes sooner by more than the installs cost. With
installs 20 times a test, a batch nobody works yet splits in two from about 40 jobs.

The extra agents are those idle now, or, for a long pole (the batch alone would finish
more than an install after the rest of its target's work), any agent serving the target:
its extra tickets wait for agents as they come free, instead of the batch running alone
at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra import events as ev

_WEIGHT = 0.2
"""Of each new observation in the moving average."""


@dataclass
class Durations:
    """Moving averages of install and test durations per target."""

    install_s: dict[ev.Target, float] = field(default_factory=dict)
    test_s: dict[ev.Target, float] = field(default_factory=dict)

    def installed(self, target: ev.Target, seconds: float) -> None:
        _observe(self.install_s, target, seconds)

    def tested(self, target: ev.Target, seconds: float) -> None:
        _observe(self.test_s, target, seconds)


def _observe(means: dict[ev.Target, float], target: ev.Target, seconds: float) -> None:
    mean = means.get(target)
    means[target] = seconds if mean is None else mean + _WEIGHT * (seconds - mean)


@dataclass(frozen=True)
class Split:
    """How many more agents, and why."""

    parts: int
    reason: str


def split(
    jobs: int,
    workers: int,
    installed: bool,
    idle: int,
    install_s: float,
    test_s: float,
    rest_s: float = 0.0,
    agents: int = 1,
) -> Split | None:
    """The extra agents for `jobs` unfinished jobs that `workers` agents work or will
    (their tickets wait), `installed` when one of them works it already; with `idle`
    agents free now, and `rest_s` the time the target's other work will keep its
    `agents` busy. None when none are worth it."""
    on_it = max(workers, 1)

    def finish(extra: int) -> float:
        needs_install = extra > 0 or not installed
        return (install_s if needs_install else 0.0) + jobs * test_s / (on_it + extra)

    long_pole = finish(0) > rest_s + install_s
    most = max(idle, agents - on_it) if long_pole else idle
    extra = min(range(max(0, most) + 1), key=lambda m: (finish(m) + m * install_s, m))
    if extra == 0:
        return None
    why = f"the rest of the work ends in {rest_s:.2f} s" if extra > idle else "idle agents"
    return Split(
        parts=extra,
        reason=f"{jobs} jobs: about {finish(extra):.2f} s on {on_it + extra} agents instead "
        f"of {finish(0):.2f} s, for {extra} more install(s) of {install_s:.2f} s ({why})",
    )
