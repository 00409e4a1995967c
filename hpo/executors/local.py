"""Trials in this process: inline for one at a time, on threads for several.

The training data is moved to the device once and shared by every trial.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

from hpo.crossval import prepare, refit, train
from hpo.epochs import EpochSink
from hpo.trial import RefitJob, TrainingSet, TrialResult, TrialSpec


def cpu_count() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_threads(concurrency: int) -> int:
    """Intra-op threads per trial when the spec does not say: the cores split between the concurrent
    trials, at most ``OMP_NUM_THREADS`` when that is set."""
    n = max(1, cpu_count() // concurrency)
    try:
        return min(n, max(1, int(os.environ["OMP_NUM_THREADS"])))
    except (KeyError, ValueError):
        return n


class LocalExecutor:
    """Runs trials in the driver process on the study's device.

    With ``max_concurrency == 1`` a trial runs inline (Ctrl-C reaches it at once); above
    that, on a thread pool (torch releases the GIL inside its kernels).
    """

    def __init__(self, training: TrainingSet, sink: EpochSink, *, device: str = "cpu", max_concurrency: int = 1,
                 threads_per_trial: int | None = None) -> None:
        import torch

        self.fold_data = prepare(training, device)
        self.sink = sink
        self.max_concurrency = max_concurrency
        self.where = f"local {device}"
        # concurrent trials share the cores instead of each spinning up a full OpenMP team (on 2 cores,
        # 2 trials x 2 threads made the same run 1-20x slower than 2 x 1, see BENCHMARKS.md)
        self.threads = threads_per_trial or auto_threads(max_concurrency)
        self._threads_before = torch.get_num_threads()
        if max_concurrency > 1:
            # OpenMP settings are per thread: each pool thread sets its own before its first trial
            self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="hpo-trial",
                                            initializer=torch.set_num_threads, initargs=(self.threads,))
        else:
            self._pool = None
            torch.set_num_threads(self.threads)  # inline trials run on this thread

    def _run(self, spec: TrialSpec) -> TrialResult:
        self.sink.begin(spec.number, spec.run_id)
        result = train(spec, self.fold_data, lambda e, m: self.sink.epoch(spec.number, spec.run_id, e, m), self.threads)
        result.worker = self.where
        result.curves = self.sink.end(spec.number, spec.run_id)
        return result

    def submit(self, spec: TrialSpec) -> Future[TrialResult]:
        """Run ``spec`` (inline or on the pool); see :class:`~hpo.executors.base.Executor`."""
        if self._pool is not None:
            return self._pool.submit(self._run, spec)
        fut: Future[TrialResult] = Future()
        fut.set_result(self._run(spec))
        return fut

    def stop_trials(self) -> None:
        """Ask running trials to stop after their current epoch."""
        self.sink.stop()

    def tracking_lost(self, wait_s: float = 0.0) -> bool:
        """Whether the sink gave up on the tracking server (here: the driver's own outbox)."""
        return self.sink.tracking_lost

    def refit(self, job: RefitJob, ds) -> tuple:
        """Run the refit of the best parameters in this process, on the study's device, on every core."""
        import torch

        before = torch.get_num_threads()
        threads = max(self.threads, auto_threads(1))
        torch.set_num_threads(threads)
        try:
            return refit(job, self.fold_data, ds.x_test, ds.y_test, threads)
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        """Wait for running trials and stop the pool."""
        import torch

        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self._threads_before)
