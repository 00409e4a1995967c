"""The search loop (:class:`hpo.loop.SearchLoop`) on its own, in seconds: budget and concurrency, the
grid cap, ``max_failures``, the timeout, a lost tracking server, SIGINT once and twice, the ``best``
tag, and what a resume carries over.

Real: the Optuna study (:func:`hpo.search.open_study`, in-memory storage, the spec's sampler), the
MLflow :class:`~hpo.tracking.Tracker` on a sqlite store in ``tmp_path`` with its parent run, the
:class:`~hpo.interrupts.Interrupts` and real signals (installed only in the signal tests, restored
after), :func:`hpo.search.requeue_interrupted`, and the loop's checkpoint writes (tiny state dicts).

Not real: the executor. :class:`ScriptedExecutor` trains nothing: each submit resolves to a canned
:class:`~hpo.trial.TrialResult` a script picks from the trial, at once, after a delay, or only when
the study stops it (``stop_trials``: KILLED, as a real executor's running trials come back). It
records what the loop asked of it. This stand-in is allowed here because the executor contract
itself (real training, concurrency, stop, tracking loss) is tested against every executor in
``tests/test_executors.py``; the dataset is a namespace with the two shapes the loop reads.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from hpo.interrupts import Interrupts
from hpo.loop import BOOKKEEPING_THREADS, FAILURES, SIGNAL, TIMEOUT, TRACKING, SearchLoop, bookkeeping_threads
from hpo.search import counts, finished_count, open_study, requeue_interrupted
from hpo.spec import parse_spec
from hpo.study import StudyRunner
from hpo.tracking import BEST_TAG, CHECKPOINT_DIR, Tracker, study_settings
from hpo.trial import (
    COMPLETE,
    FAILED,
    INTERRUPTED_ATTR,
    KILLED,
    PRUNED,
    REASON_ATTR,
    RUN_ID_ATTR,
    TrialResult,
    TrialSpec,
)

DATASET = SimpleNamespace(input_shape=(4,), n_classes=3)  # iris's shapes: all a kept checkpoint records
FALLBACK_S = 5.0  # a held trial fails after this anyway ("never stopped"): a broken loop fails, not hangs
SIGNAL_REASON = "interrupted (SIGINT/SIGTERM); re-queued on --resume"
TRACKING_REASON = "interrupted (the tracking server was unreachable); re-queued on --resume"

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- the stand-ins


def complete(ts: TrialSpec, value: float, checkpoint: dict[str, Any] | None = None) -> TrialResult:
    return TrialResult(number=ts.number, state=COMPLETE, value=value, fold_values=[value, value],
                       fold_best_epochs=[1, 1], epochs_trained=1, duration_s=0.01, checkpoint=checkpoint)


def failed(ts: TrialSpec) -> TrialResult:
    return TrialResult(number=ts.number, state=FAILED, reason="RuntimeError: boom", duration_s=0.01)


def pruned(ts: TrialSpec) -> TrialResult:
    return TrialResult(number=ts.number, state=PRUNED, reason="pruned at epoch 1", epochs_trained=1)


@dataclass
class Outcome:
    """How a submitted trial ends: ``result`` after ``after`` seconds (0: before submit returns;
    None: only when the study stops it, then KILLED; FAILED after ``FALLBACK_S`` if it never does)."""

    result: TrialResult | None = None
    after: float | None = 0.0


class ScriptedExecutor:
    """The :class:`~hpo.executors.base.Executor` protocol with no training: ``script(spec, executor)``
    says how each submitted trial ends. Records the submits (and when), the most trials it held
    unresolved at once, the ``stop_trials`` calls and the ``tracking_lost`` questions."""

    def __init__(self, script: Callable[[TrialSpec, ScriptedExecutor], Outcome], max_concurrency: int = 1,
                 *, stoppable: bool = True) -> None:
        self.script, self.max_concurrency, self.stoppable = script, max_concurrency, stoppable
        self.submitted: list[TrialSpec] = []
        self.submit_times: list[float] = []
        self.max_in_flight = 0
        self.stop_calls = 0
        self.lost = False  # what tracking_lost() answers; a script or the test sets it
        self.lost_asked: list[float] = []
        self._open: dict[int, Future] = {}
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()

    def submit(self, spec: TrialSpec) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            self.submitted.append(spec)
            self.submit_times.append(time.perf_counter())
            self._open[spec.number] = fut
            self.max_in_flight = max(self.max_in_flight, len(self._open))
        if self.stop_calls and self.stoppable:  # the study already stopped: the trial stops at its first epoch
            self._resolve(spec.number, self._killed(spec.number))
            return fut
        outcome = self.script(spec, self)  # may raise a signal, lose tracking, stop trials
        if outcome.after == 0:
            self._resolve(spec.number, outcome.result)
        elif outcome.after is not None:
            self._later(outcome.after, spec.number, outcome.result)
        else:
            self._later(FALLBACK_S, spec.number, TrialResult(number=spec.number, state=FAILED,
                                                             reason="the test's fallback: never stopped"))
        return fut

    def stop_trials(self) -> None:
        self.stop_calls += 1
        if self.stoppable:  # held trials end after "their epoch", on another thread (as a worker's would)
            threading.Thread(target=self.kill_open, daemon=True).start()

    def kill_open(self) -> None:
        """End every unresolved trial KILLED (what the epoch sink does when it gives up on tracking)."""
        with self._lock:
            numbers = list(self._open)
        for n in numbers:
            self._resolve(n, self._killed(n))

    def tracking_lost(self, wait_s: float = 0.0) -> bool:
        self.lost_asked.append(wait_s)
        return self.lost

    def refit(self, job: Any, dataset: Any) -> tuple[Any, dict[str, float]]:
        raise NotImplementedError("the loop never refits")

    def close(self) -> None:
        for t in self._timers:
            t.cancel()

    @staticmethod
    def _killed(number: int) -> TrialResult:
        return TrialResult(number=number, state=KILLED, reason="stopped by the study after epoch 1",
                           epochs_trained=1)

    def _later(self, delay: float, number: int, result: TrialResult | None) -> None:
        timer = threading.Timer(delay, self._resolve, (number, result))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _resolve(self, number: int, result: TrialResult | None) -> None:
        with self._lock:
            fut = self._open.pop(number, None)
        if fut is not None:
            try:
                fut.set_result(result)
            except InvalidStateError:
                pass


class RecordingProgress:
    """The progress display's surface; records every call. ``probe()``'s answer is kept after each trial."""

    def __init__(self, probe: Callable[[], Any] | None = None) -> None:
        self.calls: list[tuple] = []
        self.messages: list[str] = []
        self.done: list[tuple[int, str, float | None]] = []
        self.probe, self.probed = probe, []

    def start(self, spec: Any, total: int, done: int) -> None:
        self.calls.append(("start", total, done))

    def stop(self) -> None:
        self.calls.append(("stop",))

    def message(self, text: str) -> None:
        self.messages.append(text)

    def trial_done(self, result: TrialResult, best: float | None) -> None:
        self.done.append((result.number, result.state, best))
        if self.probe is not None:
            self.probed.append(self.probe())


# --------------------------------------------------------------------------- a study: spec, Optuna, MLflow


def make_spec(*, sampler: str = "random", n_trials: int | None = 10, concurrency: int = 1, keep: int = 0,
              params: dict[str, Any] | None = None, **search: Any):
    """A spec on iris (never loaded: the loop sees only the dataset's shapes)."""
    search = {"sampler": sampler, "seed": 0, **search}
    if n_trials is not None:
        search["n_trials"] = n_trials
    doc = {"name": "loop", "data": {"dataset": "iris"}, "model": "mlp", "search": search,
           "cv": {"folds": 2}, "execution": {"max_concurrent_trials": concurrency},
           "tracking": {"keep_checkpoints": keep, "report": False},
           "params": params or {"lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True}, "epochs": 1}}
    return parse_spec(yaml.safe_dump(doc, sort_keys=False))


@dataclass
class World:
    """One study's stores: the Optuna study, the tracker with its parent run, a client to read MLflow."""

    spec: Any
    study: Any
    tracker: Tracker
    client: MlflowClient
    store: str
    storage: Any
    executors: list[ScriptedExecutor] = field(default_factory=list)

    def loop(self, executor: ScriptedExecutor, *, progress: Any = None, interrupts: Interrupts | None = None,
             **kw: Any) -> SearchLoop:
        self.executors.append(executor)
        return SearchLoop(self.spec, self.study, self.tracker, executor, DATASET,
                          interrupts=interrupts or Interrupts(), progress=progress, **kw)

    def runs(self) -> dict[int, Any]:
        """The trial runs by trial number."""
        runs = self.client.search_runs([self.tracker.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
        return {int(r.data.tags["hpo.trial"]): r for r in runs}

    def best_tagged(self) -> list[int]:
        """Trial numbers whose run carries ``best=true``."""
        runs = self.client.search_runs([self.tracker.experiment_id], filter_string=f"tags.`{BEST_TAG}` = 'true'")
        return sorted(int(r.data.tags["hpo.trial"]) for r in runs)

    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)


@pytest.fixture
def world(tmp_path: Path, store: str):
    """``world(spec)``: open ``spec``'s study (in-memory Optuna) and its MLflow parent run in ``tmp_path``."""
    made: list[World] = []

    def _make(spec: Any, storage_url: str | None = None) -> World:
        """``storage_url``: Optuna's RDB storage there instead of in memory."""
        storage = optuna.storages.RDBStorage(storage_url) if storage_url else optuna.storages.InMemoryStorage()
        study = open_study(spec, storage, storage_url or "in-memory", resume=False,
                           concurrency=spec.execution.max_concurrent_trials)
        tracker = Tracker(store, spec.experiment, spec.name)
        tracker.start_study(spec, study_settings(spec), {"hpo.spec_hash": spec.spec_hash}, reuse=False)
        w = World(spec, study, tracker, MlflowClient(tracking_uri=store), store, storage)
        made.append(w)
        return w

    yield _make
    for w in made:
        for ex in w.executors:
            ex.close()


@pytest.fixture
def interrupts():
    """A real :class:`Interrupts` (``.guard``) in the search phase, installed for the test and restored
    after, calling the study's own ``on_stop`` (:meth:`StudyRunner._on_signal` of ``.runner``): it stops
    ``runner.loop`` once the test sets it."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (started in the background): Interrupts keeps it so")
    runner = StudyRunner(make_spec())
    guard = Interrupts(on_stop=runner._on_signal)
    guard.enter("search")
    guard.install()
    try:
        yield SimpleNamespace(guard=guard, runner=runner)
    finally:
        guard.restore()


def values_script(values: dict[int, float | str], after: float = 0.0):
    """Trial n ends as ``values[n]``: a number (complete), "failed" or "pruned"; unlisted ones complete at 0.5."""

    def script(ts: TrialSpec, ex: ScriptedExecutor) -> Outcome:
        v = values.get(ts.number, 0.5)
        result = failed(ts) if v == "failed" else pruned(ts) if v == "pruned" else complete(ts, float(v))
        return Outcome(result, after)

    return script


def state_of(trials: list[Any]) -> dict[int, TrialState]:
    return {t.number: t.state for t in trials}


# --------------------------------------------------------------------------- 1. budget and concurrency


@pytest.mark.parametrize("bookkeeping", [1, 4])
def test_runs_exactly_the_budget_left_never_more_than_max_concurrency_in_flight(world, bookkeeping):
    w = world(make_spec(concurrency=3))
    ex = ScriptedExecutor(values_script({}, after=0.3), max_concurrency=3)
    progress = RecordingProgress()
    loop = w.loop(ex, progress=progress, bookkeeping=bookkeeping)
    loop.run(target=7, done_before=2)

    assert sorted(ts.number for ts in ex.submitted) == [0, 1, 2, 3, 4]  # 7 - 2
    assert ex.max_in_flight == 3  # the slots are used, and never more than asked
    assert progress.calls == [("start", 7, 2), ("stop",)]
    assert len(progress.done) == 5
    assert len(loop.results) == 5 and not loop.pending and loop.stops.reasons == []
    assert state_of(w.trials()) == dict.fromkeys(range(5), TrialState.COMPLETE)
    runs = w.runs()
    assert {n: r.info.status for n, r in runs.items()} == dict.fromkeys(range(5), "FINISHED")
    for t in w.trials():  # each trial names its run, and the run got the trial's own parameters
        assert runs[t.number].info.run_id == t.user_attrs[RUN_ID_ATTR]
        assert float(runs[t.number].data.params["lr"]) == pytest.approx(t.params["lr"])


def test_nothing_is_launched_when_the_budget_is_already_spent(world):
    w = world(make_spec())
    ex = ScriptedExecutor(values_script({}))
    w.loop(ex).run(target=3, done_before=3)
    w.loop(ex).run(target=3, done_before=5)
    assert ex.submitted == [] and w.trials() == []


def test_with_bookkeeping_threads_trials_are_launched_and_told_at_once(world):
    """``bookkeeping=2``: the runs of trials 0 and 1 are opened at the same time, and closed at the same
    time: each pair meets at a barrier that a loop doing one trial after another never passes."""
    w = world(make_spec(concurrency=2))
    opened, closed = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    start, end = w.tracker.start_trial, w.tracker.end_trial

    def start_trial(number, *a, **k):
        if number < 2:
            opened.wait()
        return start(number, *a, **k)

    def end_trial(run_id, result, metric):
        if result.number < 2:
            closed.wait()
        return end(run_id, result, metric)

    w.tracker.start_trial, w.tracker.end_trial = start_trial, end_trial
    loop = w.loop(ScriptedExecutor(values_script({}), max_concurrency=2), bookkeeping=2)
    loop.run(target=4, done_before=0)

    assert state_of(w.trials()) == dict.fromkeys(range(4), TrialState.COMPLETE)
    assert {n: r.info.status for n, r in w.runs().items()} == dict.fromkeys(range(4), "FINISHED")
    assert len(loop.results) == 4 and not loop.pending and not loop.launching and not loop.settling


@pytest.mark.parametrize(("executor", "uri", "storage", "threads"), [
    ("local", "http://127.0.0.1:5000", "postgresql://db/optuna", 1),  # trials share the driver's interpreter
    ("ray", "sqlite:///mlruns/mlflow.db", "sqlite:///mlruns/optuna.db", 1),  # embedded stores: CPU-bound
    ("ray", "http://127.0.0.1:5000", "sqlite:///mlruns/optuna.db", 3),  # at most one per trial in flight
    ("ray", "sqlite:///mlruns/mlflow.db", "postgresql://db/optuna", 3),
])
def test_bookkeeping_threads_only_on_ray_behind_a_server(executor, uri, storage, threads):
    spec = make_spec(concurrency=3).replace(tracking_uri=uri, executor=executor)
    assert bookkeeping_threads(spec, storage) == threads
    many = spec.replace(max_concurrent_trials=64)
    assert bookkeeping_threads(many, storage) == (BOOKKEEPING_THREADS if threads > 1 else 1)


def test_with_bookkeeping_threads_each_enqueued_trial_runs_once(world, tmp_path):
    """Optuna's ``ask`` from several threads at once hands one waiting (enqueued, re-queued) trial to two
    of them on an RDB storage (seen 11 times in 15 tries with 4 threads): the loop asks one at a time."""
    w = world(make_spec(concurrency=8), storage_url=f"sqlite:///{tmp_path / 'optuna.db'}")
    lrs = [round(0.01 * (i + 1), 2) for i in range(8)]
    for lr in lrs:
        w.study.enqueue_trial({"lr": lr})
    ex = ScriptedExecutor(values_script({}, after=0.05), max_concurrency=8)
    w.loop(ex, bookkeeping=8).run(target=10, done_before=0)

    numbers = [ts.number for ts in ex.submitted]
    assert sorted(numbers) == list(range(10))  # each trial handed to the executor once
    assert state_of(w.trials()) == dict.fromkeys(range(10), TrialState.COMPLETE)
    assert sorted(ts.params["lr"] for ts in ex.submitted if ts.number < 8) == lrs


def test_a_bookkeeping_error_on_a_thread_ends_the_loop_with_that_error(world):
    """Launches already begun finish first; the trial whose run could not be opened is left for abandon."""
    w = world(make_spec(concurrency=2))
    start = w.tracker.start_trial

    def start_trial(number, *a, **k):
        if number == 3:
            raise RuntimeError("the store refused the run")
        return start(number, *a, **k)

    w.tracker.start_trial = start_trial
    loop = w.loop(ScriptedExecutor(values_script({}, after=0.05), max_concurrency=2), bookkeeping=2)
    with pytest.raises(RuntimeError, match="refused the run"):
        loop.run(target=8, done_before=0)
    assert list(loop.launching) == [3]
    loop.abandon()
    trials = {t.number: t for t in w.trials()}
    assert trials[3].state == TrialState.FAIL and trials[3].user_attrs[INTERRUPTED_ATTR] is True
    assert all(t.state != TrialState.RUNNING for t in trials.values())


# --------------------------------------------------------------------------- 2. the grid cap


@pytest.mark.parametrize(("concurrency", "bookkeeping"), [(2, 1), (6, 4)])
def test_a_grid_search_stops_at_the_grid_size(world, concurrency, bookkeeping):
    """Also with several trials asked at once: each grid point still runs exactly once."""
    grid = {"lr": [0.1, 0.01, 0.001], "batch_size": [16, 32], "epochs": 1}
    spec = make_spec(sampler="grid", n_trials=None, concurrency=concurrency, params=grid)
    runner = StudyRunner(spec)
    assert spec.grid_size == 6
    assert (runner._target(None), runner._target(100), runner._target(4)) == (6, 6, 4)
    assert StudyRunner(make_spec(sampler="tpe", params=grid))._target(100) == 100  # only a grid caps

    w = world(spec)
    ex = ScriptedExecutor(values_script({}, after=0.02), max_concurrency=concurrency)
    w.loop(ex, bookkeeping=bookkeeping).run(target=runner._target(100), done_before=0)
    points = [(ts.params["lr"], ts.params["batch_size"]) for ts in ex.submitted]
    assert sorted(points) == sorted((lr, bs) for lr in grid["lr"] for bs in grid["batch_size"])  # each once
    assert len(w.trials()) == 6


# --------------------------------------------------------------------------- 3. max_failures


def test_max_failures_stops_launching_and_says_so_once(world):
    w = world(make_spec(concurrency=2, max_failures=2))

    def script(ts: TrialSpec, ex: ScriptedExecutor) -> Outcome:
        if ts.number == 0:  # still running when the limit is reached: it finishes, nothing starts after it
            return Outcome(complete(ts, 0.9), after=0.4)
        if ts.number == 1:
            return Outcome(pruned(ts))  # a pruned trial is no failure
        return Outcome(failed(ts))

    ex = ScriptedExecutor(script, max_concurrency=2)
    progress = RecordingProgress()
    loop = w.loop(ex, progress=progress)
    loop.run(target=20, done_before=0)

    assert [ts.number for ts in ex.submitted] == [0, 1, 2, 3]
    assert loop.stops.reasons == [FAILURES] and FAILURES in loop.stops and loop.stops.halting is None
    assert progress.messages == ["2 trials failed (search.max_failures = 2): no new trials"]
    assert ex.stop_calls == 0  # failures stop launching; the running trial is not stopped
    assert state_of(w.trials()) == {0: TrialState.COMPLETE, 1: TrialState.PRUNED, 2: TrialState.FAIL,
                                    3: TrialState.FAIL}
    assert counts(w.study) == {"complete": 1, "pruned": 1, "failed": 2}
    for t in w.trials():
        if t.state == TrialState.FAIL:
            assert t.user_attrs[REASON_ATTR] == "RuntimeError: boom" and INTERRUPTED_ATTR not in t.user_attrs
    assert {n: r.info.status for n, r in w.runs().items()} == {0: "FINISHED", 1: "FINISHED", 2: "FAILED",
                                                              3: "FAILED"}


# --------------------------------------------------------------------------- 4. timeout


def test_timeout_stops_launching_and_lets_the_running_trial_finish(world):
    """Trials of 0.4 s and a 0.6 s timeout: trial 1 starts at ~0.4 s, well before the deadline, and is
    still running at it; trial 2 would start at ~0.8 s, well after."""
    timeout, trial_s = 0.6, 0.4
    w = world(make_spec(timeout=timeout))
    ex = ScriptedExecutor(values_script({}, after=trial_s))
    started = time.perf_counter()
    loop = w.loop(ex, started=started)
    loop.run(target=8, done_before=0)

    assert [ts.number for ts in ex.submitted] == [0, 1]
    assert time.perf_counter() >= started + 2 * trial_s  # the loop waited for the running trial
    assert loop.stops.reasons == [TIMEOUT] and ex.stop_calls == 0
    assert [r.state for r in loop.results] == [COMPLETE, COMPLETE]  # the one running at the deadline was not cut
    assert state_of(w.trials()) == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE}


# --------------------------------------------------------------------------- 5. the tracking server lost


@pytest.mark.parametrize("noticed_by", ["loop", "result"])
def test_lost_tracking_stops_the_trials_once_and_resume_requeues_them_once(world, noticed_by):
    """``loop``: the loop's own check finds tracking lost while trials run; ``result``: the executor's
    sink gave up and its trials come back KILLED first (the loop then asks why)."""
    w = world(make_spec(concurrency=2))

    def script(ts: TrialSpec, ex: ScriptedExecutor) -> Outcome:
        if ts.number == 0:
            return Outcome(complete(ts, 0.8))
        if ts.number == 2:
            ex.lost = True  # the sink gave up on the tracking server while trials 1 and 2 run
            if noticed_by == "result":
                ex.kill_open()  # ... and stopped them itself
        return Outcome(after=None)

    ex = ScriptedExecutor(script, max_concurrency=2)
    progress = RecordingProgress()
    loop = w.loop(ex, progress=progress)
    loop.run(target=6, done_before=0)

    assert [ts.number for ts in ex.submitted] == [0, 1, 2]
    assert ex.stop_calls == 1
    assert loop.tracking_lost and loop.stops.first == TRACKING
    # the loop's own check asks without waiting; a KILLED result makes it wait for the executor's answer
    assert any(wait_s > 0 for wait_s in ex.lost_asked) == (noticed_by == "result")
    assert len(progress.messages) == 1 and "tracking server" in progress.messages[0]
    trials = {t.number: t for t in w.trials()}
    assert trials[0].state == TrialState.COMPLETE
    for n in (1, 2):
        assert trials[n].state == TrialState.FAIL
        assert trials[n].user_attrs[INTERRUPTED_ATTR] is True
        assert trials[n].user_attrs[REASON_ATTR] == TRACKING_REASON
    assert finished_count(w.study) == 1 and counts(w.study)["failed"] == 0  # interrupted is no failure
    runs = w.runs()
    for n in (1, 2):
        assert runs[n].info.status == "KILLED"
        assert runs[n].data.tags["hpo.state"] == "killed" and runs[n].data.tags["hpo.reason"] == TRACKING_REASON

    interrupted = {n: trials[n].params["lr"] for n in (1, 2)}
    assert sorted(t.number for t in requeue_interrupted(w.study)) == [1, 2]
    assert requeue_interrupted(w.study) == []  # a second resume re-queues nothing new
    waiting = [t for t in w.trials() if t.state == TrialState.WAITING]
    assert len(waiting) == 2

    resumed = ScriptedExecutor(values_script({}), max_concurrency=2)
    w.loop(resumed).run(target=3, done_before=finished_count(w.study))
    assert sorted(ts.params["lr"] for ts in resumed.submitted) == sorted(interrupted.values())
    assert requeue_interrupted(w.study) == []
    assert counts(w.study) == {"complete": 3, "pruned": 0, "failed": 0}


# --------------------------------------------------------------------------- 6. SIGINT, once and twice


def _signal_script(ts: TrialSpec, ex: ScriptedExecutor) -> Outcome:
    """Trial 0 completes; 1 and 2 run until stopped; Ctrl-C arrives while trial 2 is handed over."""
    if ts.number == 0:
        return Outcome(complete(ts, 0.7))
    if ts.number == 2:
        signal.raise_signal(signal.SIGINT)
    return Outcome(after=None)


def test_first_sigint_stops_the_running_trials_and_launches_nothing(world, interrupts):
    w = world(make_spec(concurrency=2))
    ex = ScriptedExecutor(_signal_script, max_concurrency=2)
    progress = RecordingProgress()
    loop = interrupts.runner.loop = w.loop(ex, progress=progress, interrupts=interrupts.guard)
    loop.run(target=6, done_before=0)  # returns: the first signal does not raise

    assert interrupts.guard.signals == 1 and interrupts.guard.requested
    assert [ts.number for ts in ex.submitted] == [0, 1, 2]
    assert ex.stop_calls == 1 and loop.stops.reasons == [SIGNAL] and not loop.tracking_lost
    assert ex.lost_asked == [0.0] * len(ex.lost_asked)  # halted by the signal: no waiting on tracking
    assert progress.messages == ["stopping: no new trials; running ones stop after their epoch "
                                 "(press Ctrl-C again to stop now)"]
    trials = {t.number: t for t in w.trials()}
    assert trials[0].state == TrialState.COMPLETE
    runs = w.runs()
    for n in (1, 2):
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs[INTERRUPTED_ATTR] is True
        assert trials[n].user_attrs[REASON_ATTR] == SIGNAL_REASON
        assert runs[n].info.status == "KILLED" and runs[n].data.tags["hpo.reason"] == SIGNAL_REASON
    assert finished_count(w.study) == 1


@pytest.mark.parametrize("second", ["while waiting", "while launching"])
def test_second_sigint_raises_out_of_the_loop_and_abandon_closes_what_is_open(world, interrupts, second):
    """``while waiting``: a timer sends the second Ctrl-C while the loop waits for trials that do not
    stop; ``while launching``: it comes while trial 2 is handed to the executor (its run already open)."""
    w = world(make_spec(concurrency=3))
    timers: list[threading.Timer] = []

    def script(ts: TrialSpec, ex: ScriptedExecutor) -> Outcome:
        if ts.number == 0:
            return Outcome(complete(ts, 0.7))
        if ts.number == 2:
            signal.raise_signal(signal.SIGINT)
            if second == "while launching":
                signal.raise_signal(signal.SIGINT)
            else:
                timers.append(threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)))
                timers[-1].start()
        return Outcome(after=None)

    ex = ScriptedExecutor(script, max_concurrency=3, stoppable=False)  # trials deep in a long epoch
    progress = RecordingProgress()
    loop = interrupts.runner.loop = w.loop(ex, progress=progress, interrupts=interrupts.guard)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(target=6, done_before=0)
    finally:
        for t in timers:
            t.join()  # its signal is spent before the handlers are restored
    assert interrupts.guard.signals == 2 and ex.stop_calls == 1
    assert [ts.number for ts in ex.submitted] == [0, 1, 2]
    assert progress.calls[-1] == ("stop",)
    with interrupts.guard.closing():
        loop.abandon()

    assert not loop.pending and not loop.launching and not loop.settling
    trials = {t.number: t for t in w.trials()}
    assert trials[0].state == TrialState.COMPLETE and INTERRUPTED_ATTR not in trials[0].user_attrs
    runs = w.runs()
    assert runs[0].info.status == "FINISHED"
    for n in (1, 2):
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs[INTERRUPTED_ATTR] is True
        assert runs[n].info.status == "KILLED" and runs[n].data.tags["hpo.state"] == "killed"
    assert sorted(t.number for t in requeue_interrupted(w.study)) == [1, 2]


def test_second_sigint_with_bookkeeping_threads_lets_a_trial_being_told_finish(world, interrupts):
    """Both signals come while trial 0 is being closed on a bookkeeping thread: the loop raises only
    once that is done (trial 0 COMPLETE, its run FINISHED); abandon closes the trials still running."""
    w = world(make_spec(concurrency=3))
    end = w.tracker.end_trial

    def end_trial(run_id, result, metric):
        if result.number == 0:
            for n in (1, 2):  # one at a time: two signals sent together reach Python's handler once
                os.kill(os.getpid(), signal.SIGINT)
                deadline = time.monotonic() + 5
                while interrupts.guard.signals < n and time.monotonic() < deadline:
                    time.sleep(0.01)
            time.sleep(0.3)  # the main thread has its KeyboardInterrupt by now, and waits for this
        return end(run_id, result, metric)

    w.tracker.end_trial = end_trial

    def script(ts: TrialSpec, ex: ScriptedExecutor) -> Outcome:
        return Outcome(complete(ts, 0.7), after=0.2) if ts.number == 0 else Outcome(after=None)

    ex = ScriptedExecutor(script, max_concurrency=3, stoppable=False)
    progress = RecordingProgress()
    loop = interrupts.runner.loop = w.loop(ex, progress=progress, interrupts=interrupts.guard, bookkeeping=3)
    with pytest.raises(KeyboardInterrupt):
        loop.run(target=6, done_before=0)
    assert interrupts.guard.signals == 2 and progress.calls[-1] == ("stop",)
    with interrupts.guard.closing():
        loop.abandon()

    trials, runs = {t.number: t for t in w.trials()}, w.runs()
    assert trials[0].state == TrialState.COMPLETE and runs[0].info.status == "FINISHED"
    # trial 3 takes trial 0's slot while trial 0 is being told (unless the signals beat its launch)
    assert sorted(trials) in ([0, 1, 2], [0, 1, 2, 3])
    for n in sorted(trials)[1:]:
        assert trials[n].state == TrialState.FAIL and trials[n].user_attrs[INTERRUPTED_ATTR] is True
        assert runs[n].info.status == "KILLED"


# --------------------------------------------------------------------------- 7. the best tag


@pytest.mark.parametrize(("metric", "values", "tagged"), [
    # minimize: 0.3 beats 0.5; the tie (trial 3) and the worse ones leave the tag on trial 2
    ("log_loss", [0.5, 0.7, 0.3, 0.3, "failed", "pruned", 0.4, 0.1],
     [[0], [0], [2], [2], [2], [2], [2], [7]]),
    # maximize: 0.7 beats 0.5; a tie (trial 3) does not move it, 0.9 does
    ("accuracy", [0.5, 0.7, 0.3, 0.7, "failed", 0.9, "pruned", 0.8],
     [[0], [1], [1], [1], [1], [5], [5], [5]]),
])
def test_the_best_tag_follows_the_best_complete_trial_and_ties_keep_it(world, metric, values, tagged):
    w = world(make_spec(metric=metric))
    progress = RecordingProgress(probe=lambda: w.best_tagged())
    ex = ScriptedExecutor(values_script(dict(enumerate(values))))
    loop = w.loop(ex, progress=progress)
    loop.run(target=len(values), done_before=0)

    assert progress.probed == tagged  # after every trial, exactly one run carries it (once there is one)
    best = tagged[-1][0]
    assert loop.best_value == values[best] and loop.best_run == w.runs()[best].info.run_id
    assert [best_value for *_, best_value in progress.done][-1] == values[best]
    assert w.study.best_trial.number == best


# --------------------------------------------------------------------------- 8. resume: the state carried over


def test_know_complete_takes_the_best_from_stored_trials_and_repairs_the_tag(world):
    w = world(make_spec(metric="log_loss"))
    w.loop(ScriptedExecutor(values_script({0: 0.4, 1: 0.2, 2: 0.3, 3: "failed"}))).run(target=4, done_before=0)
    assert w.best_tagged() == [1]
    runs = w.runs()
    # a crash between telling Optuna and moving the tag: the tag is on the wrong runs, not on the best
    w.client.delete_tag(runs[1].info.run_id, BEST_TAG)
    for n in (0, 2):
        w.client.set_tag(runs[n].info.run_id, BEST_TAG, "true")

    study = open_study(w.spec, w.storage, "in-memory", resume=True, concurrency=1)  # a resume: new handles
    tracker = Tracker(w.store, w.spec.experiment, w.spec.name)
    tracker.start_study(w.spec, study_settings(w.spec), {}, reuse=True, parent_id=w.tracker.parent_id)
    resumed = SearchLoop(w.spec, study, tracker, ScriptedExecutor(values_script({4: 0.25, 5: 0.1})), DATASET,
                         interrupts=Interrupts())
    resumed.know_complete(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    assert resumed.best_value == 0.2 and resumed.best_run == runs[1].info.run_id
    assert w.best_tagged() == [1]  # repaired: the best run alone
    resumed.run(target=5, done_before=finished_count(study))
    assert w.best_tagged() == [1]  # 0.25 does not beat the stored 0.2
    resumed.run(target=6, done_before=finished_count(study))
    assert w.best_tagged() == [5] and resumed.best_value == 0.1


def test_know_complete_on_a_study_with_no_complete_trial_tags_nothing(world):
    w = world(make_spec())
    w.loop(ScriptedExecutor(values_script({0: "failed", 1: "pruned"}))).run(target=2, done_before=0)
    loop = w.loop(ScriptedExecutor(values_script({})))
    loop.know_complete(w.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    assert loop.best_run is None and loop.best_value is None and w.best_tagged() == []


# --------------------------------------------------------------------------- top-k checkpoints


@pytest.mark.parametrize(("concurrency", "bookkeeping"), [(1, 1), (3, 4)])
def test_only_the_top_k_trials_keep_their_checkpoints(world, concurrency, bookkeeping):
    """Also with several trials told at once: whatever order they come back in, the kept set is the same."""
    w = world(make_spec(metric="accuracy", keep=2, concurrency=concurrency))

    def script(ts: TrialSpec, ex: ScriptedExecutor) -> Outcome:
        value = [0.5, 0.8, 0.6, 0.9, 0.1][ts.number]
        folds = [{"weight": torch.full((2, 4), float(ts.number)), "bias": torch.zeros(2)} for _ in range(2)]
        return Outcome(complete(ts, value, checkpoint={"folds": folds}))

    loop = w.loop(ScriptedExecutor(script, max_concurrency=concurrency), bookkeeping=bookkeeping)
    loop.run(target=5, done_before=0)

    runs = w.runs()
    with_checkpoint = sorted(n for n, r in runs.items()
                             if w.client.list_artifacts(r.info.run_id, CHECKPOINT_DIR))
    assert with_checkpoint == [1, 3]  # 0.9 and 0.8; 0.5 and 0.6 were dropped when better ones came
    assert [e[1] for e in loop.topk.entries] == [3, 1]
    assert w.best_tagged() == [3]
    assert all(r.checkpoint is None for r in loop.results)  # the weights are not kept in the driver
    local = w.client.download_artifacts(runs[3].info.run_id, CHECKPOINT_DIR)
    blob = torch.load(next(Path(local).iterdir()), weights_only=True)
    assert blob["input_shape"] == [4] and blob["n_outputs"] == 3 and blob["extra"]["trial"] == 3
    assert torch.equal(blob["folds"][1]["weight"], torch.full((2, 4), 3.0))
