"""The interface every executor implements."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol

from hpo.trial import TrialResult, TrialSpec


class Executor(Protocol):
    """Runs trials. ``max_concurrency`` trials may be in flight at once."""

    max_concurrency: int

    def submit(self, spec: TrialSpec) -> Future[TrialResult]:
        """Start ``spec``; the future resolves to its result (a failed trial is a result, not an exception).

        The trial's epochs go to the executor's :class:`~hpo.reporting.EpochSink`."""
        ...

    def stop_trials(self) -> None:
        """Ask running trials to stop after their current epoch (the study is stopping)."""
        ...

    def refit(self, job, dataset) -> tuple:
        """Train the best parameters on all training data where trials run; returns (CPU model, test metrics)."""
        ...

    def close(self) -> None:
        """Release workers and device memory."""
        ...
