"""Trials in this process: inline for one at a time, on threads for several.

The training data is moved to the device once and shared by every trial.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from hpo.trial import EpochCallback, FoldData, TrialResult, TrialSpec, run_trial


class LocalExecutor:
    """Runs trials in the driver process on the study's device.

    With ``max_concurrency == 1`` a trial runs inline (Ctrl-C reaches it at once); above
    that, on a thread pool (torch releases the GIL inside its kernels).
    """

    def __init__(self, fold_data: FoldData, max_concurrency: int = 1) -> None:
        self.fold_data = fold_data
        self.max_concurrency = max_concurrency
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="hpo-trial") if max_concurrency > 1 else None

    def submit(self, spec: TrialSpec, on_epoch: EpochCallback | None) -> Future[TrialResult]:
        """Run ``spec`` (inline or on the pool); see :class:`~hpo.executors.base.Executor`."""
        if self._pool is not None:
            return self._pool.submit(run_trial, spec, self.fold_data, on_epoch)
        fut: Future[TrialResult] = Future()
        fut.set_result(run_trial(spec, self.fold_data, on_epoch))
        return fut

    def close(self) -> None:
        """Wait for running trials and stop the pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
