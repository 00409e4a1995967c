"""Trials on Ray workers: long-lived actors, the dataset shipped once, retries on worker death.

Each of ``max_concurrent_trials`` actors holds ``cpus_per_trial`` CPUs and
``gpus_per_trial`` GPUs (fractions share a GPU; Ray sets ``CUDA_VISIBLE_DEVICES`` so a
trial sees only its own). The training data goes into the object store once and each
actor moves it to its device once, at start; a trial then costs one method call. Epochs
go to the driver's :class:`~hpo.epochs.EpochSink` actor, which logs to MLflow and asks
Optuna's pruner. A worker killed mid-trial is restarted by Ray and the trial re-run, up
to ``max_retries`` times; then it is recorded as failed with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np

from hpo.crossval import prepare, refit, train
from hpo.epochs import EpochSink, SinkConfig
from hpo.errors import HpoError
from hpo.trial import FAILED, RefitJob, TrainingSet, TrialResult, TrialSpec, Verdict

MAX_UNANSWERED_EPOCHS = 256  # epoch reports a worker sends ahead of the sink's answers (no pruner): a bound
# for a sink that cannot keep up; while the sink actor starts (a second or two) workers train on


class TrialWorker:
    """The body of a Ray actor: the study's data on this worker's device, then trials on demand."""

    def __init__(self, training: TrainingSet, device: str, sink: Any, threads: int = 1, prunes: bool = True) -> None:
        import torch

        torch.set_num_threads(threads)

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        # object-store arrays are read-only; a private copy keeps torch from sharing them (a user objective's
        # torch Dataset arrives as the object it is)
        if isinstance(training.x, np.ndarray):
            training = dataclasses.replace(training, x=np.array(training.x), y=np.array(training.y))
        self.threads = threads
        self.fold_data = prepare(training, device)
        _warm_up_torch()
        self.sink = sink
        self.prunes = prunes  # without a pruner an epoch needs no answer before the next one starts
        self.where = self._describe()

    def _describe(self) -> str:
        import ray
        import torch

        node = ray.util.get_node_ip_address()
        if self.device.startswith("cuda"):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "?")
            return f"{node} cuda (CUDA_VISIBLE_DEVICES={visible}, {torch.cuda.get_device_name(0)})"
        return f"{node} cpu (pid {os.getpid()})"

    def pid(self) -> int:
        """This worker's process id (tests kill it to prove retries)."""
        return os.getpid()

    def refit(self, job: RefitJob, x_test: np.ndarray, y_test: np.ndarray) -> tuple:
        """Train the best parameters on all training data here; returns (CPU model, test metrics)."""
        return refit(job, self.fold_data, x_test, y_test, self.threads)

    def run(self, spec: TrialSpec) -> TrialResult:
        """Run one trial, reporting every epoch to the sink.

        With a pruner each epoch waits for the sink's answer (prune or go on). Without one the
        reports are sent ahead and their answers (stop: the study is stopping) are read as they
        arrive; the sink runs one caller's calls in order, so its ``end`` follows every epoch."""
        import ray

        attempt_ref = self.sink.begin.remote(spec.number, spec.run_id)  # read at the end: the sink may still start
        unanswered: list[Any] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> Verdict:
            ref = self.sink.epoch.remote(spec.number, spec.run_id, epoch, metrics)
            if self.prunes:
                return ray.get(ref)
            unanswered.append(ref)
            behind = len(unanswered) - MAX_UNANSWERED_EPOCHS
            if behind > 0:  # the sink is falling behind: wait for the oldest answers
                ready, unanswered[:] = ray.wait(unanswered, num_returns=behind)
            else:
                ready, unanswered[:] = ray.wait(unanswered, num_returns=len(unanswered), timeout=0)
            return Verdict.STOP if Verdict.STOP in ray.get(ready) else Verdict.GO

        result = train(spec, self.fold_data, on_epoch, self.threads)
        result.worker = self.where
        result.attempts = ray.get(attempt_ref) + 1
        result.curves = ray.get(self.sink.end.remote(spec.number, spec.run_id))  # after every epoch: one caller, in order
        return result


def _warm_up_torch() -> None:
    """Pay torch's one-off costs while the worker starts, not inside its first trial: the first
    optimizer built imports ``torch._dynamo`` (about 1 s on one core)."""
    import torch

    torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)


def connect(address: str | None, code_dirs: list[str] | tuple[str, ...] = ()) -> bool:
    """Connect to Ray: ``address`` (or ``RAY_ADDRESS``), else start a local Ray sized to this machine.

    ``code_dirs``: folders the user's code (``factory:`` modules) is imported from; a local Ray's
    workers get them on their ``PYTHONPATH``. On a cluster the code travels with the job
    (``hpo submit`` ships it in the job's working directory) or is installed there.

    Returns True when this call started Ray (the caller shuts it down). Raises HpoError when
    the cluster cannot be reached.
    """
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if target == "local":
        kwargs.update(num_cpus=os.cpu_count(), include_dashboard=False)
        if code_dirs:
            path = [*code_dirs, *filter(None, [os.environ.get("PYTHONPATH")])]
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(path)}}
    try:
        ray.init(address=target, **kwargs)
    except Exception as exc:
        raise HpoError(f"cannot connect to the Ray cluster at {target}: {exc}. Check execution.address / "
                       "--address, and RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH if the cluster uses token auth") from None
    return True


class RayExecutor:
    """Runs trials on a pool of Ray actors. See the module docstring."""

    def __init__(self, training: TrainingSet, sink: SinkConfig, *, device: str, max_concurrency: int,
                 cpus_per_trial: float, gpus_per_trial: float, max_retries: int, threads_per_trial: int | None = None,
                 prunes: bool = True) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.cpus_per_trial, self.gpus_per_trial = cpus_per_trial, gpus_per_trial
        here = ray.get_runtime_context().get_node_id()
        sink_cls = ray.remote(num_cpus=0)(EpochSinkActor)
        # the sink reaches the driver's stores (a local sqlite file included): keep it on the driver's node
        self.sink = sink_cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(sink)
        # held for the executor's lifetime: a restarted worker re-reads its constructor arguments
        self._data_ref = data_ref = ray.put(training)
        worker_cls = ray.remote(TrialWorker).options(
            num_cpus=cpus_per_trial, num_gpus=gpus_per_trial,
            max_restarts=-1, max_task_retries=max_retries,
        )
        threads = threads_per_trial or max(1, int(cpus_per_trial))
        self.workers = [worker_cls.remote(data_ref, device, self.sink, threads, prunes)
                        for _ in range(max_concurrency)]
        self._idle = list(self.workers)
        self._lock = threading.Lock()
        self._lost, self._lost_ref = False, None
        ray.get([w.pid.remote() for w in self.workers])  # fail here, not mid-study, if workers cannot start

    def submit(self, spec: TrialSpec) -> Future[TrialResult]:
        """Run ``spec`` on an idle worker; the future resolves to a result, never raises."""
        with self._lock:
            if not self._idle:
                raise RuntimeError(f"all {self.max_concurrency} Ray workers are busy: submit at most "
                                   "max_concurrency trials at a time")
            worker = self._idle.pop()
        out: Future[TrialResult] = Future()
        ref = worker.run.remote(spec)

        def done(fut: Future) -> None:
            with self._lock:
                self._idle.append(worker)
            try:
                out.set_result(fut.result())
            except Exception as exc:  # the worker died more often than max_retries allowed
                out.set_result(TrialResult(number=spec.number, state=FAILED, attempts=self.max_retries + 1,
                                           reason=f"worker lost {self.max_retries + 1} time(s): "
                                                  f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))

        ref.future().add_done_callback(done)
        return out

    def refit(self, job: RefitJob, ds) -> tuple:
        """Run the refit on one of the workers: the training data is already on its device."""
        import ray

        return ray.get(self.workers[0].refit.remote(job, ds.x_test, ds.y_test))

    def stop_trials(self) -> None:
        """Ask running trials to stop after their current epoch."""
        self.sink.stop.remote()

    def tracking_lost(self, wait_s: float = 0.0) -> bool:
        """Whether the sink actor's outbox gave up on the tracking server (it then stops every trial).

        The actor answers in turn with the epochs it is logging: the question stays asked until it
        answers, waiting at most ``wait_s`` seconds here, so the study loop never blocks on it."""
        import ray

        if not self._lost:
            if self._lost_ref is None:
                self._lost_ref = self.sink.tracking_lost.remote()
            ready, _ = ray.wait([self._lost_ref], timeout=wait_s)
            if ready:
                self._lost_ref = None
                try:
                    self._lost = bool(ray.get(ready[0]))
                except Exception:  # noqa: S110 - the actor is gone with its node; trials end as lost workers
                    pass
        return self._lost

    def close(self) -> None:
        """Release the actors (the Ray instance itself is the caller's)."""
        import ray

        for w in self.workers:
            ray.kill(w)
        try:  # last epochs still waiting for the tracking server stay in the spool on disk
            ray.get(self.sink.flush.remote(), timeout=30)
        except Exception:  # noqa: S110 - the sink may already be gone with its node
            pass
        ray.kill(self.sink)


class EpochSinkActor:
    """:class:`~hpo.epochs.EpochSink` as a Ray actor: it opens its own MLflow client and Optuna study."""

    def __init__(self, config: SinkConfig) -> None:
        self.sink = EpochSink.open(config)

    def begin(self, number: int, run_id: str | None = None) -> int:
        """See :meth:`EpochSink.begin`."""
        return self.sink.begin(number, run_id)

    def epoch(self, number: int, run_id: str | None, epoch: int, metrics: dict[str, float]) -> Verdict:
        """See :meth:`EpochSink.epoch`."""
        return self.sink.epoch(number, run_id, epoch, metrics)

    def end(self, number: int, run_id: str | None) -> list[tuple[str, float, int, int]]:
        """See :meth:`EpochSink.end`."""
        return self.sink.end(number, run_id)

    def stop(self) -> None:
        """See :meth:`EpochSink.stop`."""
        self.sink.stop()

    def tracking_lost(self) -> bool:
        """See :attr:`EpochSink.tracking_lost`."""
        return self.sink.tracking_lost

    def flush(self) -> int:
        """See :meth:`EpochSink.flush`."""
        return self.sink.flush()
