"""The interface every executor implements."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from hpo.trial import EpochCallback, TrialResult, TrialSpec


class Executor(Protocol):
    """Runs trials. ``max_concurrency`` trials may be in flight at once."""

    max_concurrency: int

    def submit(self, spec: TrialSpec, on_epoch: EpochCallback | None) -> Future[TrialResult]:
        """Start ``spec``; the future resolves to its result (a failed trial is a result, not an exception)."""
        ...

    def close(self) -> None:
        """Release workers and device memory."""
        ...
