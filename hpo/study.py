"""A study: Optuna asks, an executor evaluates, Optuna is told; then the best is refit and tested.

Data flow: spec -> dataset + folds -> Optuna study (sampler, pruner, storage) ->
for each trial: suggest -> TrialSpec -> executor -> TrialResult -> tell + MLflow child run ->
refit of the best on all training data -> test metrics, checkpoint, registered model.
"""

from __future__ import annotations

import gc
import logging
import math
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo import space
from hpo.errors import StudyExistsError
from hpo.interrupts import Interrupted, Interrupts
from hpo.metrics import is_better
from hpo.redact import redact
from hpo.resume import (
    KEY_ATTR,
    METRIC_ATTR,
    REFIT_ATTR,
    REPORT_ATTR,
    check_resume,
    finished_record,
    resume_key,
)
from hpo.search import make_pruner, make_sampler, open_storage
from hpo.spec import Spec, load_spec
from hpo.trial import (
    COMPLETE,
    CV_STD_ATTR,
    DURATION_ATTR,
    FAILED,
    FOLD_EPOCHS_ATTR,
    FOLD_VALUES_ATTR,
    INTERRUPTED_ATTR,
    KILLED,
    PRUNED,
    REASON_ATTR,
    RUN_ID_ATTR,
    TrainingSet,
    TrialResult,
    TrialSpec,
)

log = logging.getLogger("hpo")

REQUEUED_ATTR = "hpo.requeued"
SIGNAL_STOP, TRACKING_STOP = "SIGINT/SIGTERM", "the tracking server was unreachable"  # why trials were stopped


@dataclass
class StudyResult:
    """What a finished study returns (also what ``hpo run`` prints)."""

    name: str
    metric: str
    direction: str
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    test_metrics: dict[str, float]
    counts: dict[str, int]
    parent_run_id: str
    experiment_id: str
    model_uri: str | None
    duration_s: float
    trials: list[TrialResult] = field(default_factory=list)
    interrupted: bool = False
    already_finished: bool = False  # a resumed study that had nothing left to do (nothing was run or written)
    tracking_lost: bool = False  # stopped because the tracking server was gone too long
    tracking_waiting: int = 0  # MLflow writes still waiting in the spool (send them with `hpo sync NAME`)
    spool: str | None = None
    tracking_uri: str = ""
    tracking_failed: str | None = None  # writes the tracking store refused (kept in the spool): what and why


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except OSError:
        return None


def _lineage(spec: Spec) -> dict[str, str]:
    import mlflow
    import optuna
    import torch

    import hpo

    tags = {
        "hpo.spec_hash": spec.spec_hash,
        "hpo.seed": str(spec.search.seed),
        "hpo.version": hpo.__version__,
        "torch.version": torch.__version__,
        "optuna.version": optuna.__version__,
        "mlflow.version": mlflow.__version__,
    }
    from hpo.usercode import load_target, source_hash

    for tag, target, group in (("hpo.code_hash", spec.model if spec.is_factory_model else None, "hpo.models"),
                               ("hpo.data_code_hash", spec.data.factory, "hpo.data")):
        if target:  # the user's code is part of what the study measured
            tags[tag] = source_hash(load_target(target, spec_path=spec.path, group=group)) or "no source file"
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["hpo.git_commit"] = commit
    return tags


def _settings(spec: Spec) -> dict[str, Any]:
    return {
        "dataset": spec.data.label, "model": spec.model, "sampler": spec.search.sampler,
        "n_trials": spec.n_trials, "seed": spec.search.seed, "metric": spec.metric,
        "direction": spec.direction, "pruner": spec.search.pruner, "folds": spec.cv.folds,
        "test_size": spec.data.test_size, "executor": spec.execution.executor,
        "max_concurrent_trials": spec.execution.max_concurrent_trials,
    }


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``. Raises HpoError for cuda without one."""
    import torch

    from hpo.errors import HpoError

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise HpoError("execution.device is cuda but torch sees no GPU; install a CUDA build of torch "
                       "(see README, 'Using a GPU') or set execution.device: auto")
    return requested


class _TopK:
    """The ``keep`` best complete trials, so their checkpoints can be kept and the rest deleted."""

    def __init__(self, keep: int, direction: str) -> None:
        self.keep, self.sign = keep, (-1.0 if direction == "maximize" else 1.0)
        self.entries: list[tuple[float, int, str]] = []  # (sort key, number, run_id)

    def offer(self, value: float, number: int, run_id: str) -> tuple[bool, list[str]]:
        """Add a trial; returns (kept, run ids that dropped out)."""
        if self.keep <= 0 or not math.isfinite(value):
            return False, []
        self.entries.append((self.sign * value, number, run_id))
        self.entries.sort()
        dropped = [e[2] for e in self.entries[self.keep:]]
        self.entries = self.entries[: self.keep]
        kept = any(e[1] == number for e in self.entries)
        return kept, [r for r in dropped if r != run_id]


class StudyRunner:
    """Runs one study end to end. Most users call :func:`run` instead."""

    def __init__(self, spec: Spec, *, resume: bool = False, progress: Any = None) -> None:
        self.spec = spec
        self.resume = resume
        self.progress = progress
        self._stop = False  # no new trials (a signal, lost tracking)
        self._why: str | None = None  # why running trials were told to stop (SIGNAL_STOP, TRACKING_STOP)
        self._started = 0.0
        self._started_ray = False
        self.already_finished = False
        self.results: list[TrialResult] = []
        self._pending: dict[Future, tuple[Any, str, dict[str, Any]]] = {}  # trials in flight
        self._launching: tuple[Any, str | None, dict[str, Any] | None] | None = None

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> None:
        import optuna

        from hpo.data import load_spec_dataset
        from hpo.epochs import EpochSink
        from hpo.folds import make_folds
        from hpo.outbox import spool_dir
        from hpo.spool import failed_writes, resolve_target, waiting
        from hpo.sqlite_store import check_writable
        from hpo.tracking import Tracker, check_reachable, optuna_storage_for, store_lock

        spec = self.spec
        self.storage_url = spec.tracking.storage or optuna_storage_for(spec.tracking.uri)
        for uri in (spec.tracking.uri, self.storage_url):  # an unwritable store: stop before any work
            check_writable(uri)
        spool = spool_dir(spec.tracking.uri, spec.name)
        if waiting(spool) or failed_writes(spool):  # writes left for another store: refuse before writing here
            resolve_target(spool, spec.tracking.uri, command=f"hpo sync {spec.name}",
                           given_as="this study's tracking URI (tracking.uri or --tracking-uri)")
        # data next: a bad dataset is an error before anything is written
        self.dataset = load_spec_dataset(spec)
        if spec.is_factory_model:  # the user's factory builds a model of the right shape, or nothing runs
            from hpo.models import check_build

            check_build(spec, self.dataset.input_shape, self.dataset.n_classes or 1)
        folds = make_folds(self.dataset.y_train, spec.cv.folds, spec.search.seed, spec.task == "classification",
                          self.dataset.class_names)
        self.device = resolve_device(spec.execution.device)
        check_reachable(spec.tracking.uri)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with store_lock(spec.tracking.uri):
            storage = open_storage(self.storage_url)
            existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
            summary = existing.get(spec.name)
            if summary is not None and not self.resume and (
                    summary.n_trials > 0 or "mlflow.parent_run_id" in summary.user_attrs):
                raise StudyExistsError(
                    f"study {spec.name!r} already exists in {redact(self.storage_url)} ({summary.n_trials} trials). "
                    f"Continue it with: hpo run {spec.path or 'SPEC'} --resume (add --n-trials N to raise the "
                    "budget; two processes with --resume share the work), or give the spec another name"
                )
            if summary is not None:  # resuming: the spec must still describe this study
                check_resume(spec, summary.user_attrs, summary.direction.name.lower())
            conc = spec.execution.max_concurrent_trials
            self.study = optuna.create_study(storage=storage, study_name=spec.name, direction=spec.direction,
                                             sampler=make_sampler(spec, conc), pruner=make_pruner(spec), load_if_exists=True)
            if KEY_ATTR not in self.study.user_attrs:
                self.study.set_user_attr(KEY_ATTR, resume_key(spec))
            self.study.set_user_attr("hpo.spec_hash", spec.spec_hash)
            self.study.set_user_attr(METRIC_ATTR, spec.metric)

            self.tracker = Tracker(spec.tracking.uri, spec.experiment, spec.name,
                                   outage_timeout=spec.tracking.outage_timeout)
            self._sync_spool()
            known_parent = self.tracker.out.real_id(self.study.user_attrs.get("mlflow.parent_run_id"))
            if self._is_finished():
                self.parent_id = known_parent or self.tracker.find_study_run()
                return
            self.parent_id = self.tracker.start_study(spec, _settings(spec), _lineage(spec), reuse=self.resume,
                                                      parent_id=known_parent)
            self.study.set_user_attr("mlflow.parent_run_id", self.parent_id)

        self.sink = EpochSink(self.tracker.out, self.study, spec.metric)
        self.executor = self._executor(TrainingSet(self.dataset.x_train, self.dataset.y_train, self.dataset.n_classes,
                                                   folds, standardize=spec.data.standardize))
        self.topk = _TopK(spec.tracking.keep_checkpoints, spec.direction)
        self.best_run: str | None = None
        self.best_value: float | None = None
        self._rebuild_state()

    def _executor(self, training: TrainingSet):
        """The executor the spec asks for, with the training data placed where its trials run."""
        from hpo.epochs import SinkConfig
        from hpo.executors import make_executor

        spec = self.spec
        config = SinkConfig(tracking_uri=spec.tracking.uri, storage_url=self.storage_url, study_name=spec.name,
                            metric=spec.metric, pruner=spec.search.pruner,
                            outage_timeout=spec.tracking.outage_timeout, spool=str(self.tracker.spool))
        executor, self._started_ray = make_executor(spec, training, sink=self.sink, sink_config=config,
                                                    device=self.device, code_dirs=self._code_dirs())
        return executor

    def _code_dirs(self) -> list[str]:
        """Where the spec's user code is imported from (spec folder, working directory), when it has any."""
        from hpo.usercode import search_dirs

        spec = self.spec
        uses_code = spec.is_factory_model or bool(getattr(spec.data, "factory", None))
        return [str(d) for d in search_dirs(spec.path)] if uses_code else []

    def _rebuild_state(self) -> None:
        """On resume: fail and re-queue trials a dead driver left RUNNING, re-queue interrupted ones."""
        from optuna.trial import TrialState

        storage = self.study._storage
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        requeued = set(self.study.user_attrs.get(REQUEUED_ATTR, []))
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get(INTERRUPTED_ATTR) and t.number not in requeued:
                self.study.enqueue_trial(t.params, skip_if_exists=False)
                requeued.add(t.number)
                run_id = self.tracker.out.real_id(t.user_attrs.get(RUN_ID_ATTR))
                if run_id:
                    try:
                        self.tracker.out.set_terminated(run_id, status="KILLED")
                        self.tracker.set_tag(run_id, "hpo.state", "killed")
                    except Exception:  # the run may not exist any more; the trial re-runs either way
                        pass
        self.study.set_user_attr(REQUEUED_ATTR, sorted(requeued))
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            run_id = self.tracker.out.real_id(t.user_attrs.get(RUN_ID_ATTR))
            if run_id and t.value is not None:
                self.topk.offer(t.value, t.number, run_id)
                if is_better(t.value, self.best_value, self.spec.direction):
                    self.best_value, self.best_run = t.value, run_id
        if self.best_run is not None:  # a crash between tell and the tag move left it elsewhere, or nowhere
            self.tracker.repair_best(self.best_run)

    def _finished_count(self) -> int:
        from optuna.trial import TrialState

        n = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                n += 1
            elif t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR):
                n += 1
        return n

    # ------------------------------------------------------------------ the loop

    def _launch(self) -> Future:
        """Ask Optuna for a trial, open its run, hand it to the executor; the trial is in ``_pending``
        (or, while the executor runs it inline, in ``_launching``) until it is told."""
        spec = self.spec
        with self.interrupts.held():
            trial = self.study.ask()
            self._launching = (trial, None, None)
            sampled = space.suggest(trial, spec)
            params = space.resolve(spec, sampled)
            run_id = self.tracker.start_trial(trial.number, params, sampled)
            self._launching = (trial, run_id, params)
            trial.set_user_attr(RUN_ID_ATTR, run_id)
        ts = TrialSpec(number=trial.number, params=params, model=spec.model, metric=spec.metric,
                       direction=spec.direction, seed=spec.search.seed, run_id=run_id)
        fut = self.executor.submit(ts)  # the inline executor runs the whole trial here
        with self.interrupts.held():
            self._pending[fut] = self._launching
            self._launching = None
        return fut

    def _finish(self, result: TrialResult, trial: Any, run_id: str, params: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        spec = self.spec
        if result.state == KILLED:  # the epoch sink stopped it: say why the study stopped
            if self._why is None and self.executor.tracking_lost(wait_s=10.0):
                self._why = TRACKING_STOP
            result.reason = f"interrupted ({self._why or SIGNAL_STOP}); re-queued on --resume"
        trial.set_user_attr(DURATION_ATTR, round(result.duration_s, 3))
        if result.fold_values:
            trial.set_user_attr(FOLD_VALUES_ATTR, result.fold_values)
            trial.set_user_attr(FOLD_EPOCHS_ATTR, result.fold_best_epochs)
            trial.set_user_attr(CV_STD_ATTR, result.std)
        if result.reason:
            trial.set_user_attr(REASON_ATTR, result.reason)
        if result.state == COMPLETE:
            self.study.tell(trial, result.value)
        elif result.state == PRUNED:
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            if result.state == KILLED:
                trial.set_user_attr(INTERRUPTED_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
        self.tracker.end_trial(run_id, result, spec.metric)
        if result.state == COMPLETE and result.value is not None:
            self._keep_checkpoint(result, run_id, params)
            if is_better(result.value, self.best_value, spec.direction):
                self.tracker.move_best(self.best_run, run_id)
                self.best_value, self.best_run = result.value, run_id
        result.checkpoint = None  # weights are on disk now (or not needed); keep driver memory flat
        self.results.append(result)
        if self.progress is not None:
            self.progress.trial_done(result, self.best_value)

    def _keep_checkpoint(self, result: TrialResult, run_id: str, params: dict[str, Any]) -> None:
        from hpo.checkpoint import save_checkpoint
        from hpo.tracking import CHECKPOINT_DIR, temp_dir

        kept, dropped = self.topk.offer(result.value, result.number, run_id)
        if kept and result.checkpoint is not None:
            ds = self.dataset
            path = Path(temp_dir()) / "trial.pt"
            save_checkpoint(path, model=self.spec.model, params=params, input_shape=ds.input_shape,
                            n_outputs=ds.n_classes or 1, regression=ds.n_classes == 0,
                            folds=result.checkpoint["folds"], extra={"best_epochs": result.fold_best_epochs,
                                                                       "trial": result.number})
            self.tracker.log_file(run_id, path, CHECKPOINT_DIR)
            path.unlink()
            path.parent.rmdir()
        for old in dropped:
            try:
                self.tracker.delete_artifacts(old, CHECKPOINT_DIR)
            except Exception as exc:  # a checkpoint we cannot delete costs disk, not correctness
                log.warning("could not delete the checkpoint of run %s: %s", old, exc)

    def _on_signal(self) -> None:
        """First Ctrl-C / SIGTERM during the search: no new trials; running ones stop after their epoch."""
        self._stop = True
        self._why = self._why or SIGNAL_STOP
        self.executor.stop_trials()
        if self.progress is not None:
            self.progress.message("stopping: no new trials; running ones stop after their epoch "
                                  "(press Ctrl-C again to stop now)")

    def run(self, n_trials: int | None = None) -> StudyResult:
        """Run trials until ``n_trials`` are finished (or the timeout / a signal), then refit and test.

        A signal in any phase (set-up, trials, refit, model logging, report) ends the parent run
        KILLED and returns an interrupted result; ``--resume`` continues from what is stored.
        """
        self._started = time.perf_counter()
        self.target = self._target(n_trials)
        self.interrupts = Interrupts(on_stop=self._on_signal)
        self.interrupts.install()
        try:
            try:
                self._prepare()
                if self.already_finished:
                    self.interrupts.check()
                    return self._result(self._refit_record.get("model_uri"), self._refit_record.get("test_metrics", {}))
                # the set-up's objects (MLflow, SQLAlchemy, Optuna, torch: ~10^6 of them) live to the end: keeping
                # them out of the garbage collector's full passes saves ~0.2-0.35 s per pass (BENCHMARKS.md);
                # a caller's own frozen objects (gc.freeze before a fork, say) are left as they are
                self._froze = gc.get_freeze_count() == 0
                if self._froze:
                    gc.freeze()
                return self._run_phases()
            except (KeyboardInterrupt, Interrupted):
                with self.interrupts.closing():
                    return self._stopped()
        finally:
            with self.interrupts.closing():
                if getattr(self, "_froze", False):
                    gc.unfreeze()
                if getattr(self, "executor", None) is not None:
                    self.executor.close()
                if self._started_ray:
                    import ray

                    ray.shutdown()
            self.interrupts.restore()

    def _run_phases(self) -> StudyResult:
        """Search, then refit, log and report; each phase is entered only if no signal came before it."""
        from hpo.outbox import is_outage

        self.interrupts.enter("search")
        lost = self._search()
        self.interrupts.check()  # a first Ctrl-C during the search: the trials stopped, now the study does
        if not lost and not self.tracker.out.drain(self._grace_left()):
            self._lose_tracking()  # the server did not come back before the refit: resume refits later
            lost = True
        if lost:
            self.tracker.end_study("KILLED")
            return self._settle(self._result(None, {}, interrupted=True))
        try:
            model_uri, test_metrics = self._finale()
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:
            if not is_outage(exc):
                self._fail_study(exc)
            self.tracker.out.went_down(exc)
            self._lose_tracking()
            self.tracker.end_study("KILLED")
            return self._settle(self._result(None, {}, interrupted=True))
        self.tracker.end_study("FINISHED")
        return self._settle(self._result(model_uri, test_metrics))

    def _stopped(self) -> StudyResult:
        """After a signal: close every trial still open and the parent run (KILLED); resume continues."""
        self._abandon()
        tracker = getattr(self, "tracker", None)
        if tracker is not None and not self.already_finished:
            try:
                tracker.end_study("KILLED")  # a no-op when the parent run was not opened yet
            except Exception as exc:  # the result must still say "interrupted"
                log.warning("could not close the study's run: %s", exc)
        if tracker is None:  # stopped during set-up, before anything was written
            return StudyResult(name=self.spec.name, metric=self.spec.metric, direction=self.spec.direction,
                               best_number=None, best_value=None, best_params={}, test_metrics={}, counts={},
                               parent_run_id="", experiment_id="", model_uri=None,
                               duration_s=time.perf_counter() - self._started, interrupted=True)
        return self._settle(self._result(None, {}, interrupted=True))

    def _fail_study(self, exc: Exception) -> None:
        """The search finished but the refit, model logging or report failed: the parent run ends
        FAILED with the reason, and the error says how to retry (``--resume`` refits again)."""
        from hpo.errors import RefitError

        reason = f"{type(exc).__name__}: {exc}"
        try:
            self.tracker.set_tag(self.parent_id, "hpo.reason", f"refit failed: {reason}"[:5000])
            self.tracker.end_study("FAILED")
        except Exception as inner:
            log.warning("could not mark the study's run failed: %s", inner)
        done = self._finished_count()
        raise RefitError(f"the {done} trials of study {self.spec.name!r} are saved, but refitting the best one "
                         f"failed: {reason}. Fix the cause, then refit with: hpo run {self.spec.path or 'SPEC'} "
                         "--resume (set HPO_DEBUG=1 to see the traceback)") from exc

    def _target(self, n_trials: int | None) -> int:
        """Finished trials the study should reach (the grid size caps a grid search)."""
        target = n_trials or self.spec.n_trials
        if self.spec.search.sampler == "grid":
            target = min(target, self.spec.grid_size or target)
        return target

    def _is_finished(self) -> bool:
        """Whether a resumed study has nothing left to do: every trial run, refit and report done."""
        self.already_finished = False
        self._refit_record: dict[str, Any] = {}
        if not self.resume:
            return False
        done = self._finished_count()
        rec = finished_record(self.study.user_attrs, done)
        if rec is None or done < self.target:
            return False
        if self.spec.tracking.report and self.study.user_attrs.get(REPORT_ATTR) != done:
            return False  # interrupted while drawing the report: finish it
        self.already_finished, self._refit_record = True, rec
        return True

    def _search(self) -> bool:
        """The ask -> evaluate -> tell loop; returns True when it stopped because tracking was lost."""
        spec = self.spec
        target = self.target
        self.results: list[TrialResult] = []
        done_before = self._finished_count()
        remaining = max(0, target - done_before)
        if self.progress is not None:
            self.progress.start(spec, total=target, done=done_before)
        launched = 0
        deadline = None if spec.search.timeout is None else self._started + spec.search.timeout
        try:
            while True:
                while (not self._stop and not self._too_many_failures() and launched < remaining
                       and len(self._pending) < self.executor.max_concurrency
                       and (deadline is None or time.perf_counter() < deadline)):
                    fut = self._launch()
                    launched += 1
                    if fut.done():
                        break
                if not self._pending:
                    break
                finished, _ = wait(list(self._pending), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    with self.interrupts.held():
                        trial, run_id, params = self._pending[fut]
                        self._finish(fut.result(), trial, run_id, params)
                        del self._pending[fut]
                self._check_tracking()
            return getattr(self, "tracking_lost", False)
        finally:
            if self.progress is not None:
                self.progress.stop()

    def _sync_spool(self) -> None:
        """Send tracking writes an earlier run of this study left waiting (``hpo sync`` does the same).

        Only into the store they were made for: a spool that records another URI than this study's
        stops the run (exit 2, both named); writes the store refused stop it too (exit 1, see
        :class:`hpo.spool.SyncError`)."""
        from hpo.errors import TrackingError
        from hpo.outbox import read_ids, sync
        from hpo.spool import failed_writes, resolve_target, waiting

        spool, uri, name = self.tracker.spool, self.spec.tracking.uri, self.spec.name
        if not waiting(spool) and not failed_writes(spool):
            return
        resolve_target(spool, uri, given_as="this study's tracking URI (tracking.uri or --tracking-uri)",
                       command=f"hpo sync {name}")
        sent, left = sync(self.tracker.client, spool)
        if left:
            raise TrackingError(f"{left} tracking writes of an earlier run of {name!r} wait in {spool} and "
                                f"{redact(uri)} does not take them yet; retry when it answers "
                                f"(hpo sync {name} --tracking-uri '{redact(uri)}')")
        log.warning("sent %d tracking writes an earlier run left waiting in %s", sent, spool)
        self.tracker.out.ids.update(read_ids(spool))

    def _grace_left(self) -> float:
        out = self.tracker.out
        if out.down_since is None:
            return 0.0
        return max(0.0, out.grace_s - (time.monotonic() - out.down_since))

    def _check_tracking(self) -> None:
        """Retry waiting tracking writes; stop the study when the server has been gone too long."""
        out = self.tracker.out
        out.flush()
        if (out.gave_up or self.executor.tracking_lost()) and not self._stop:
            self._lose_tracking()

    def _lose_tracking(self) -> None:
        self._stop = self.tracking_lost = True
        self._why = self._why or TRACKING_STOP
        self.executor.stop_trials()
        if self.progress is not None:
            self.progress.message(f"the tracking server {redact(self.spec.tracking.uri)} has not answered for "
                                  f"{self.tracker.out.grace_s:.0f}s ({self.tracker.out.last_error}): stopping; "
                                  "running trials stop after their epoch")

    def _settle(self, result: StudyResult) -> StudyResult:
        """Last try to send waiting writes; what still waits, or was refused, is reported with where it is kept."""
        from hpo.spool import failed_message, failed_writes

        out = self.tracker.out
        out.drain(self._grace_left())  # what is left of the grace period; one last try once it is over
        result.tracking_waiting = out.pending
        result.spool = str(self.tracker.spool) if out.pending else None
        result.tracking_uri = self.spec.tracking.uri
        result.tracking_lost = getattr(self, "tracking_lost", False) or bool(out.pending)
        failed = failed_writes(self.tracker.spool)  # this process's and the Ray sink's
        if failed:
            result.tracking_failed = failed_message(failed, self.tracker.spool, self.spec.tracking.uri)
        return result

    def _too_many_failures(self) -> bool:
        limit = self.spec.search.max_failures
        if limit is None:
            return False
        failed = sum(r.state == FAILED for r in self.results)
        if failed >= limit and not getattr(self, "_failure_stop", False):
            self._failure_stop = True
            if self.progress is not None:
                self.progress.message(f"{failed} trials failed (search.max_failures = {limit}): no new trials")
        return failed >= limit

    def _abandon(self) -> None:
        """Record trials still open (in flight, or being launched) as interrupted so a resume re-queues them."""
        from optuna.trial import TrialState

        open_trials = list(getattr(self, "_pending", {}).values())
        if getattr(self, "_launching", None) is not None:
            open_trials.append(self._launching)
        self._pending, self._launching = {}, None
        for trial, run_id, _ in open_trials:
            try:
                trial.set_user_attr(INTERRUPTED_ATTR, True)
                self.study.tell(trial, state=TrialState.FAIL)
            except Exception as exc:  # keep going: the rest must still be closed
                log.warning("could not close trial %s: %s", trial.number, exc)
            if run_id is not None:
                try:
                    self.tracker.out.set_terminated(run_id, status="KILLED")
                    self.tracker.set_tag(run_id, "hpo.state", "killed")
                except Exception as exc:
                    log.warning("could not close the run of trial %s: %s", trial.number, exc)

    # ------------------------------------------------------------------ refit and results

    def _finale(self) -> tuple[str | None, dict[str, float]]:
        """Refit the best trial (unless this study already did, for the same trials), then the report."""
        from hpo import refit

        done = self._finished_count()
        rec = finished_record(self.study.user_attrs, done)
        model = None
        if rec is None:
            self.interrupts.enter("refit")
            best = refit.refit_best(self.study, self.spec, self.dataset, self.executor)
            self.interrupts.enter("log")
            model_uri, test_metrics = None, {}
            if best is not None:
                model, test_metrics = best.model, best.test_metrics
                model_uri = refit.log_refit(best, tracker=self.tracker, parent_id=self.parent_id, spec=self.spec,
                                            dataset=self.dataset, counts=self._counts())
            refit.log_trials_table(self.study, self.tracker, self.parent_id)
            self.study.set_user_attr(REFIT_ATTR, {"finished": done, "model_uri": model_uri,
                                                  "test_metrics": test_metrics,
                                                  "best_trial": None if best is None else best.best.number})
        else:  # stopped during the report last time: the model is registered already
            model_uri, test_metrics = rec.get("model_uri"), rec.get("test_metrics", {})
        if self.spec.tracking.report and self.study.user_attrs.get(REPORT_ATTR) != done:
            self.interrupts.enter("report")
            if model is None and model_uri is not None:
                model = refit.stored_model(self.tracker, self.parent_id, self.spec.tracking.uri)
            refit.write_study_report(self.study, self.tracker, self.parent_id, self.spec, self.dataset, model,
                                     stop=self.interrupts.check)
        self.interrupts.enter("log")
        self.study.set_user_attr(REPORT_ATTR, done)
        return model_uri, test_metrics

    def _counts(self) -> dict[str, int]:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        return {
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED_ATTR) for t in trials),
        }

    def _result(self, model_uri: str | None, test_metrics: dict[str, float], interrupted: bool = False) -> StudyResult:
        try:
            best = self.study.best_trial
            bn, bv, bp = best.number, best.value, dict(best.params)
        except ValueError:
            bn, bv, bp = None, None, {}
        return StudyResult(
            name=self.spec.name, metric=self.spec.metric, direction=self.spec.direction, best_number=bn,
            best_value=bv, best_params=bp, test_metrics=test_metrics, counts=self._counts(),
            parent_run_id=getattr(self, "parent_id", None) or "", experiment_id=self.tracker.experiment_id, model_uri=model_uri,
            duration_s=time.perf_counter() - self._started, trials=self.results, interrupted=interrupted,
            already_finished=self.already_finished,
        )


def run(spec: Spec | str | Path, *, n_trials: int | None = None, seed: int | None = None,
        tracking_uri: str | None = None, executor: str | None = None, address: str | None = None,
        resume: bool = False, progress: Any = None) -> StudyResult:
    """Run a study from a :class:`Spec` or a spec file path; returns its :class:`StudyResult`.

    Keyword overrides mirror the CLI flags. Raises :class:`~hpo.errors.HpoError` subclasses
    for bad specs, data, tracking stores, or an existing study without ``resume``.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = seed
    if tracking_uri is not None:
        changes["tracking_uri"] = tracking_uri
    if executor is not None:
        changes["executor"] = executor
    if address is not None:
        changes["address"] = address
    if changes:
        spec = spec.replace(**changes)
    return StudyRunner(spec, resume=resume, progress=progress).run(n_trials=n_trials)
