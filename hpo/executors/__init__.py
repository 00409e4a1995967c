"""Executors run :class:`~hpo.trial.TrialSpec` records and hand back :class:`~hpo.trial.TrialResult` futures.

Every executor has the same small surface (see :class:`Executor`); the study only asks,
submits, waits and tells. :func:`make_executor` builds the one a spec asks for.
"""

from __future__ import annotations

from typing import Any

from hpo.executors.base import Executor
from hpo.executors.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "make_executor"]


def make_executor(spec: Any, training: Any, *, sink: Any, sink_config: Any, device: str,
                  code_dirs: list[str]) -> tuple[Executor, bool]:
    """The executor ``spec.execution`` asks for, with ``training`` placed where its trials run.

    Locally the trials report to ``sink`` (an :class:`~hpo.epochs.EpochSink` in this process); on
    Ray to a sink actor opened from ``sink_config`` on the driver's node, and a local Ray's workers
    import the user's code from ``code_dirs``. Returns (executor, whether this call started Ray:
    the caller shuts it down)."""
    ex = spec.execution
    if ex.executor == "ray":
        from hpo.executors.ray import RayExecutor, connect

        started = connect(ex.address, code_dirs=code_dirs)
        try:
            return RayExecutor(training, sink_config, device=ex.device, max_concurrency=ex.max_concurrent_trials,
                               cpus_per_trial=ex.cpus_per_trial, gpus_per_trial=ex.gpus_per_trial,
                               max_retries=ex.max_retries, threads_per_trial=ex.threads_per_trial,
                               prunes=sink.prunes), started
        except BaseException:
            if started:
                import ray

                ray.shutdown()
            raise
    return LocalExecutor(training, sink, device=device, max_concurrency=ex.max_concurrent_trials,
                         threads_per_trial=ex.threads_per_trial), False
