"""The executor contract: one suite that every executor passes (local inline, local pool, Ray).

The study only asks, submits, waits and tells; whatever runs its trials must therefore:

1. resolve a submit to a :class:`~hpo.trial.TrialResult` (complete: its value is the mean of
   its fold values, every epoch trained);
2. resolve a failing trial to a FAILED result with the reason: the future never raises; a trial
   submitted with ``pack=True`` trains its folds as one stacked model, with the sequential values;
3. hand the trial's epochs 1..n to the epoch sink in order, and its end before the result
   (Optuna holds each epoch's value, the MLflow child run the whole curve);
4. on ``stop_trials()``, end running trials KILLED after the epoch the stop reaches them in,
   their curves ending there (locally the current epoch; on Ray without a pruner a worker
   runs up to ``MAX_UNANSWERED_EPOCHS`` epochs ahead of the sink's answers, so later);
5. keep ``max_concurrency`` trials in flight as the study submits them (never more than
   asked; the pool and Ray really run them at once) and take new ones as old ones end;
6. ``refit`` the best parameters: a CPU model in eval mode and its test metrics;
7. report ``tracking_lost()``: False with a healthy store, True once the sink's outbox gave up
   on the tracking server (its next trials are then stopped);
8. release on ``close()`` what it held (local: torch's thread count and the pool's threads;
   Ray: its worker and sink actors).

Built like Optuna's ``StorageTestCase`` (optuna/testing/pytest_storages.py): the tests live
once, in :class:`ExecutorContract`; each subclass says only how to build its executor
(``make``) and how to see what one holds (``holds``). Everything is real: an Optuna sqlite study and an
MLflow sqlite store in a temporary folder, iris in 2 folds, an MLP of width 8.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from hpo.crossval import FoldData, run_trial
from hpo.data import load_dataset
from hpo.epochs import EpochSink, SinkConfig
from hpo.executors import Executor, LocalExecutor
from hpo.folds import make_folds
from hpo.outbox import HTTP_ENV
from hpo.params import PARAMS, default_value
from hpo.search import open_storage
from hpo.tracking import Tracker, optuna_storage_for
from hpo.trial import COMPLETE, FAILED, KILLED, RefitJob, TrainingSet, TrialResult, TrialSpec
from tests._services import free_port

FOLDS = 2
RESULT_TIMEOUT_S = 120.0  # a broken executor fails the test instead of hanging it
LONG_EPOCHS = 5000  # a trial that only ends when it is stopped (iris trains an epoch in a few ms)
OUTAGE_GRACE_S = 0.3  # tracking.outage_timeout of the sink whose server is gone
STUDY = "contract"


@functools.cache
def iris():
    """iris with its test split, and its training split in ``FOLDS`` stratified folds."""
    ds = load_dataset("iris")
    folds = make_folds(ds.y_train, FOLDS, 0, True)
    return ds, TrainingSet(ds.x_train, ds.y_train, ds.n_classes, folds)


def trial_params(**overrides: Any) -> dict[str, Any]:
    """Every parameter of an MLP trial, defaults filled in, small enough to train in milliseconds."""
    params = {name: default_value(name, "mlp") for name in PARAMS}
    params.update(depth=1, width=8, batch_size=64, epochs=3)
    params.update(overrides)
    return params


@dataclasses.dataclass
class Stores:
    """The real Optuna study and MLflow store an executor's sink writes to, and trials to submit into them."""

    config: SinkConfig
    study: optuna.Study
    tracker: Tracker

    def spec(self, **params: Any) -> TrialSpec:
        """A new trial as the study submits it: asked from Optuna, with its MLflow child run."""
        trial = self.study.ask()
        run_id = self.tracker.out.create_run(self.tracker.experiment_id, f"trial-{trial.number:03d}",
                                             {"hpo.trial": str(trial.number)})
        return TrialSpec(number=trial.number, params=trial_params(**params), model="mlp", metric="accuracy",
                         direction="maximize", seed=0, run_id=run_id)

    def curves(self) -> dict[int, dict[int, float]]:
        """Every trial's Optuna intermediate values as stored now: {number: {epoch: value}}."""
        return {t.number: dict(t.intermediate_values) for t in self.study.get_trials(deepcopy=False)}

    def ended(self, spec: TrialSpec, result: TrialResult) -> TrialResult:
        """Close the trial's run as the study does: the end metrics with the curve points the sink gave back."""
        self.tracker.end_trial(spec.run_id, result, spec.metric)
        return result

    def history(self, run_id: str, key: str = "val_accuracy") -> list[Any]:
        """The MLflow metric history of ``key`` in ``run_id``, in step order."""
        return sorted(self.tracker.client.get_metric_history(run_id, key), key=lambda m: m.step)


def open_stores(folder: Path) -> Stores:
    """A fresh MLflow sqlite store and Optuna study (no pruner) in ``folder``, and the sink config for them."""
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    tracker = Tracker(uri, "executors", STUDY)
    storage_url = optuna_storage_for(uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=open_storage(storage_url), study_name=STUDY, direction="maximize")
    config = SinkConfig(tracking_uri=uri, storage_url=storage_url, study_name=STUDY, key="val_accuracy",
                        pruner="none", outage_timeout=300.0)
    return Stores(config, study, tracker)


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait until ``check()`` holds; fail with ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:.0f}s: {what}")
        time.sleep(0.05)


def result_of(future: Future[TrialResult]) -> TrialResult:
    """The result a future resolves to; an exception from the future fails the test."""
    assert future.exception(timeout=RESULT_TIMEOUT_S) is None
    return future.result()


class ExecutorContract:
    """What every executor does. A subclass sets ``max_concurrency`` and implements ``make`` and ``holds``."""

    max_concurrency = 1

    def make(self, config: SinkConfig) -> Executor:
        """A new executor of this kind on iris, its epochs going to a sink opened from ``config``."""
        raise NotImplementedError

    def holds(self, ex: Executor) -> bool:
        """Whether ``ex`` still holds what executors of this kind take (threads, processes)."""
        raise NotImplementedError

    @pytest.fixture
    def stores(self, tmp_path: Path) -> Stores:
        return open_stores(tmp_path)

    @pytest.fixture
    def executor(self, stores: Stores) -> Iterator[Executor]:
        ex = self.make(stores.config)
        yield ex
        ex.close()

    @pytest.fixture
    def fresh(self, stores: Stores) -> Iterator[Callable[..., Executor]]:
        """Executors of one test, for contracts that leave an executor changed (stopped, cut off)."""
        made: list[Executor] = []

        def make(config: SinkConfig | None = None) -> Executor:
            made.append(self.make(config or stores.config))
            return made[-1]

        yield make
        for ex in made:
            ex.close()

    # ------------------------------------------------------------------ 1, 2: results

    def test_a_submit_resolves_to_a_complete_result(self, executor: Executor, stores: Stores) -> None:
        spec = stores.spec(epochs=3)
        result = result_of(executor.submit(spec))
        assert isinstance(result, TrialResult)
        assert (result.number, result.state, result.reason) == (spec.number, COMPLETE, "")
        assert result.epochs_trained == 3
        assert len(result.fold_values) == FOLDS and all(1 <= e <= 3 for e in result.fold_best_epochs)
        assert result.value == pytest.approx(statistics.fmean(result.fold_values))
        assert len(result.checkpoint["folds"]) == FOLDS
        assert result.worker and result.attempts == 1

    @pytest.mark.parametrize(("params", "reason"), [
        ({"optimizer": "nonexistent"}, "KeyError: 'nonexistent'"),
        ({"optimizer": "sgd", "lr": 1e12, "epochs": 20}, "lower lr or set grad_clip"),
    ], ids=["error", "diverged"])
    def test_a_failing_trial_is_a_failed_result_not_an_exception(self, executor: Executor, stores: Stores,
                                                                 params: dict[str, Any], reason: str) -> None:
        spec = stores.spec(**params)
        result = result_of(executor.submit(spec))
        assert (result.number, result.state) == (spec.number, FAILED)
        assert reason in result.reason

    def test_a_packed_trial_trains_its_folds_stacked_with_the_sequential_values(self, executor: Executor,
                                                                                stores: Stores) -> None:
        spec = dataclasses.replace(stores.spec(epochs=3, dropout=0.2), pack=True)
        result = result_of(executor.submit(spec))
        assert (result.state, result.packed) == (COMPLETE, "true")
        alone = run_trial(dataclasses.replace(spec, pack=False, run_id=None), FoldData.build(iris()[1], "cpu"))
        n_val = min(len(va) for _tr, va in iris()[1].folds)
        assert np.allclose(result.fold_values, alone.fold_values, rtol=0, atol=1 / n_val + 1e-12)

    # ------------------------------------------------------------------ 3: the epoch sink

    def test_the_sink_gets_every_epoch_in_order_and_the_end_before_the_result(self, executor: Executor,
                                                                              stores: Stores) -> None:
        epochs = 6
        spec = stores.spec(epochs=epochs)
        result = result_of(executor.submit(spec))
        assert result.state == COMPLETE
        curve = stores.curves()[spec.number]
        assert sorted(curve) == list(range(1, epochs + 1))
        # the sink sends curves every CURVE_FLUSH_S seconds and gives the rest back at a trial's end,
        # with its result: the whole curve with the end metrics' write means the end came after every epoch
        assert sorted({e for k, _v, _ts, e in result.curves if k == "val_accuracy"}) == list(range(1, epochs + 1))
        stores.ended(spec, result)
        history = stores.history(spec.run_id)
        assert [m.step for m in history] == list(range(1, epochs + 1))
        assert [m.value for m in history] == pytest.approx([curve[e] for e in range(1, epochs + 1)])
        stamps = [m.timestamp for m in history]
        assert stamps == sorted(stamps)  # each epoch reached the sink after the one before
        for key in ("fold0/val_accuracy", f"fold{FOLDS - 1}/train_loss", "train_loss", "val_loss"):
            assert [m.step for m in stores.history(spec.run_id, key)] == list(range(1, epochs + 1))

    # ------------------------------------------------------------------ 4: stopping

    def test_stop_trials_ends_running_trials_killed_after_their_current_epoch(self, fresh, stores: Stores) -> None:
        ex = fresh()
        specs = [stores.spec(epochs=LONG_EPOCHS) for _ in range(ex.max_concurrency)]
        stopped = threading.Event()

        def stop_once_all_run() -> None:  # a thread: the inline executor's submit returns only at the end
            deadline = time.monotonic() + RESULT_TIMEOUT_S
            while time.monotonic() < deadline:
                curves = stores.curves()
                if all(curves[s.number] for s in specs):
                    ex.stop_trials()
                    stopped.set()
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=stop_once_all_run, daemon=True)
        watcher.start()
        results = [result_of(f) for f in [ex.submit(s) for s in specs]]
        watcher.join(RESULT_TIMEOUT_S)
        assert stopped.is_set()
        curves = stores.curves()
        for spec, result in zip(specs, results, strict=True):
            assert result.state == KILLED and "stopped by the study" in result.reason
            assert 1 <= result.epochs_trained < LONG_EPOCHS
            # no epoch after the one the stop answered: the curve ends where the trial did
            assert sorted(curves[spec.number]) == list(range(1, result.epochs_trained + 1))
            stores.ended(spec, result)
            assert [m.step for m in stores.history(spec.run_id)] == list(range(1, result.epochs_trained + 1))

    # ------------------------------------------------------------------ 5: concurrency

    def test_max_concurrency_trials_run_at_once_and_never_more(self, executor: Executor, stores: Stores) -> None:
        assert executor.max_concurrency == self.max_concurrency
        epochs = 100
        specs = [stores.spec(epochs=epochs) for _ in range(self.max_concurrency + 1)]  # the last waits for a free slot
        queue, pending, running_seen = list(specs), {}, 0
        results: dict[int, TrialResult] = {}
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        while queue or pending:  # as the study's loop submits: only while fewer than max_concurrency are in flight
            assert time.monotonic() < deadline, "the trials did not end"
            while queue and len(pending) < executor.max_concurrency:
                spec = queue.pop(0)
                pending[executor.submit(spec)] = spec
            # in flight, seen from the stores: some epochs reported, not all
            curves = stores.curves()
            running = [s.number for s in specs if 0 < len(curves[s.number]) < epochs]
            running_seen = max(running_seen, len(running))
            assert len(running) <= executor.max_concurrency
            for fut in [f for f in pending if f.done()]:
                results[pending.pop(fut).number] = result_of(fut)
            time.sleep(0.01)
        if self.max_concurrency > 1:
            assert running_seen == self.max_concurrency
        assert sorted(results) == [s.number for s in specs]
        assert {(r.state, r.epochs_trained) for r in results.values()} == {(COMPLETE, epochs)}

    # ------------------------------------------------------------------ 6: refit

    def test_refit_returns_a_cpu_model_in_eval_mode_and_its_test_metrics(self, executor: Executor) -> None:
        ds, _training = iris()
        job = RefitJob(model="mlp", params=trial_params(lr=0.05, epochs=10), epochs=10, seed=0,
                       direction="maximize", metrics=["accuracy", "log_loss"])
        model, metrics = executor.refit(job, ds)
        assert isinstance(model, torch.nn.Module)
        assert not any(m.training for m in model.modules())
        assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cpu"}
        assert set(metrics) == {"accuracy", "log_loss"}
        with torch.no_grad():  # the model returned is the model tested, its input scaling built in
            predicted = model(torch.as_tensor(ds.x_test)).argmax(1).numpy()
        assert metrics["accuracy"] == pytest.approx(float(np.mean(predicted == ds.y_test)))
        assert metrics["accuracy"] > 0.6  # it learned iris

    # ------------------------------------------------------------------ 7: tracking

    def test_tracking_is_not_lost_with_a_healthy_store(self, executor: Executor, stores: Stores) -> None:
        assert result_of(executor.submit(stores.spec(epochs=2))).state == COMPLETE
        assert executor.tracking_lost(wait_s=10.0) is False

    def test_tracking_is_lost_once_the_sinks_outbox_gave_up(self, fresh, stores: Stores,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
        for key, value in HTTP_ENV.items():  # the sink sets these in its process: restore them after the test
            monkeypatch.setenv(key, os.environ.get(key, value))
        gone = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request is refused
        # flush_s=0: the sink sends every epoch's curves (a trial's last ones go back with its result)
        ex = fresh(dataclasses.replace(stores.config, tracking_uri=gone, outage_timeout=OUTAGE_GRACE_S, flush_s=0))
        # the first trial's curves cannot be sent: they wait in the outbox, the result stands
        assert result_of(ex.submit(stores.spec(epochs=2))).state == COMPLETE
        eventually(lambda: ex.tracking_lost(wait_s=1.0), f"tracking_lost() after {OUTAGE_GRACE_S}s without the server")
        # from now on the sink stops every trial after its first epoch
        late = result_of(ex.submit(stores.spec(epochs=LONG_EPOCHS)))
        assert late.state == KILLED and 1 <= late.epochs_trained < LONG_EPOCHS
        assert ex.tracking_lost() is True

    # ------------------------------------------------------------------ 8: close

    def test_close_releases_what_the_executor_held(self, stores: Stores) -> None:
        ex = self.make(stores.config)
        try:
            assert result_of(ex.submit(stores.spec(epochs=2))).state == COMPLETE
            assert self.holds(ex)
        finally:
            ex.close()
        eventually(lambda: not self.holds(ex), "close() releases what the executor held")


class LocalContract(ExecutorContract):
    """The local executor: trials in this process, epochs to an :class:`EpochSink` in this process."""

    @pytest.fixture(autouse=True)
    def _two_torch_threads(self) -> Iterator[None]:
        """Executors use 1 thread per trial: with 2 before, a thread count left behind shows."""
        before = torch.get_num_threads()
        torch.set_num_threads(2)
        yield
        torch.set_num_threads(before)

    def make(self, config: SinkConfig) -> Executor:
        _ds, training = iris()
        return LocalExecutor(training, EpochSink.open(config), device="cpu", max_concurrency=self.max_concurrency,
                             threads_per_trial=1)

    def holds(self, ex: Executor) -> bool:
        pool = [t for t in threading.enumerate() if t.name.startswith("hpo-trial")]
        return torch.get_num_threads() != 2 or bool(pool)  # 2: what _two_torch_threads set


class TestLocalInline(LocalContract):
    """One trial at a time, run inline by ``submit``."""

    max_concurrency = 1


class TestLocalPool(LocalContract):
    """Two trials at a time on a thread pool."""

    max_concurrency = 2


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One local Ray (2 CPUs) for the module; a Ray some other test left running is used as it is."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()  # hpo.executors.ray.connect joins a running Ray the same way
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.slow
class TestRay(ExecutorContract):
    """Two Ray actors, half a CPU each; epochs go to the sink actor. One executor serves the class;
    the tests that stop or cut off an executor (or close it) start their own."""

    max_concurrency = 2

    @pytest.fixture(scope="class")
    def stores(self, tmp_path_factory: pytest.TempPathFactory, local_ray: Any) -> Stores:
        return open_stores(tmp_path_factory.mktemp("ray"))

    @pytest.fixture(scope="class")
    def executor(self, stores: Stores) -> Iterator[Executor]:
        ex = self.make(stores.config)
        yield ex
        ex.close()

    def make(self, config: SinkConfig) -> Executor:
        from hpo.executors.ray import RayExecutor

        _ds, training = iris()
        # half a CPU each: the class's executor and a test's own fit in 2 CPUs side by side
        return RayExecutor(training, config, device="cpu", max_concurrency=self.max_concurrency, cpus_per_trial=0.5,
                           gpus_per_trial=0, max_retries=0, threads_per_trial=1, prunes=False)

    def holds(self, ex: Executor) -> bool:
        import ray

        alive = 0
        for actor in [*ex.workers, ex.sink]:  # its trial workers and its sink actor
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=10)
                alive += 1
            except ray.exceptions.RayActorError:
                pass
        return alive > 0
