"""What every benchmark run shares: progress lines, percentiles, and the error raised
when the system under test answers something a benchmark cannot count."""

from __future__ import annotations

import statistics
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


class BenchError(Exception):
    """The system under test answered something a benchmark cannot count."""


def progress(message: str) -> None:
    """A progress line on stderr, so stdout holds only the figures."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], pct: int) -> float:
    """The `pct`-th percentile (1-99) of at least two samples."""
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]
