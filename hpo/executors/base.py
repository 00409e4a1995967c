"""The interface every executor implements."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Protocol

from hpo.trial import RefitJob, TrialResult, TrialSpec


class Executor(Protocol):
    """Runs trials where they train. ``max_concurrency`` trials may be in flight at once.

    Every executor is built from the same inputs: the study's :class:`~hpo.trial.TrainingSet`
    (placed on the device where its trials run, once) and where epochs go (an
    :class:`~hpo.epochs.EpochSink`, or on Ray the :class:`~hpo.epochs.SinkConfig` its sink
    actor opens). :func:`hpo.executors.make_executor` builds the one a spec asks for.
    """

    max_concurrency: int

    def submit(self, spec: TrialSpec) -> Future[TrialResult]:
        """Start ``spec``; the future resolves to its result (a failed trial is a result, not an exception).

        The trial's epochs go to the executor's epoch sink, whose answers may prune or stop it."""
        ...

    def stop_trials(self) -> None:
        """Ask running trials to stop (they end KILLED): after their current epoch locally or with a
        pruner; on Ray without a pruner, once the sink has answered the epochs sent ahead (at most
        ``MAX_UNANSWERED_EPOCHS``, usually within a second or two)."""
        ...

    def tracking_lost(self, wait_s: float = 0.0) -> bool:
        """Whether the epoch sink gave up on the tracking server (it then stops every trial)."""
        ...

    def refit(self, job: RefitJob, dataset: Any) -> tuple[Any, dict[str, float]]:
        """Train ``job`` on all training data where trials run and test it on ``dataset``'s test split;
        returns (CPU model in eval mode, test metrics)."""
        ...

    def close(self) -> None:
        """Release workers and device memory."""
        ...
