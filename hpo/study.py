"""A study: open its stores, run the search loop, refit the best, settle the tracking writes.

Data flow: spec -> dataset + folds -> Optuna study (:mod:`hpo.search`) + MLflow parent run
(:mod:`hpo.tracking`) -> executor (:mod:`hpo.executors`) -> the search loop (:mod:`hpo.loop`:
suggest -> TrialSpec -> executor -> TrialResult -> tell + child run) -> the finale
(:mod:`hpo.refit`: refit of the best on all training data -> test metrics, checkpoint,
registered model, trials table, report) -> :class:`StudyResult`.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo.interrupts import Interrupted, Interrupts
from hpo.refit import Finale
from hpo.resume import PARENT_RUN_ATTR, REPORT_ATTR, finished_record
from hpo.search import counts, finished_count
from hpo.spec import Spec, load_spec
from hpo.trial import INTERRUPTED_ATTR, RUN_ID_ATTR, TrainingSet, TrialResult  # noqa: F401 (INTERRUPTED_ATTR re-exported)

log = logging.getLogger("hpo")


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
    registered_model: str | None = None  # "models:/NAME/VERSION (@alias, ...)": the refit model in the registry
    trials: list[TrialResult] = field(default_factory=list)
    interrupted: bool = False
    already_finished: bool = False  # a resumed study that had nothing left to do (nothing was run or written)
    tracking_lost: bool = False  # stopped because the tracking server was gone too long
    tracking_waiting: int = 0  # MLflow writes still waiting in the spool (send them with `hpo sync NAME`)
    spool: str | None = None
    tracking_uri: str = ""
    tracking_failed: str | None = None  # writes the tracking store refused (kept in the spool): what and why
    stop_reason: str | None = None  # why the search stopped proposing trials ("budget: ...", "target: ...", ...)
    selected: str | None = None  # several objectives: which search.select rule picked the best trial from the front


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


class StudyRunner:
    """Runs one study end to end. Most users call :func:`run` instead."""

    def __init__(self, spec: Spec, *, resume: bool = False, progress: Any = None) -> None:
        from hpo.sqlite_store import absolute

        if absolute(spec.tracking.uri) != spec.tracking.uri:  # a relative sqlite store: this folder's, fixed now
            spec = spec.replace(tracking_uri=absolute(spec.tracking.uri))
        self.spec = spec
        self.resume = resume
        self.progress = progress
        self._started = 0.0
        self._started_ray = False
        self.already_finished = False
        self.loop: Any = None  # the search loop, once the stores are open
        self.tracker: Any = None
        self.executor: Any = None

    # ------------------------------------------------------------------ set-up

    def _prepare(self) -> None:
        """Open everything the study needs, checking the cheap things first: stores writable, data,
        the user's model, the tracking server, the Optuna study (exists? resumable?), the parent run,
        the epoch sink and the executor, then the state a resume carries over."""
        import optuna

        from hpo.data import load_spec_dataset
        from hpo.folds import make_folds
        from hpo.loop import SearchLoop, bookkeeping_threads
        from hpo.outbox import spool_dir
        from hpo.packing import study_packing
        from hpo.search import open_storage, open_study, requeue_interrupted
        from hpo.spool import failed_writes, resolve_target, waiting
        from hpo.sqlite_store import absolute, check_writable
        from hpo.tracking import (
            PACKED_TAG,
            Tracker,
            check_reachable,
            lineage_tags,
            optuna_storage_for,
            store_lock,
            study_settings,
        )
        from hpo.warm_start import enqueue_first, warm_start_configs

        spec = self.spec
        self.storage_url = absolute(spec.tracking.storage or optuna_storage_for(spec.tracking.uri))
        for uri in (spec.tracking.uri, self.storage_url):  # an unwritable store: stop before any work
            check_writable(uri)
        spool = spool_dir(spec.tracking.uri, spec.name)
        if waiting(spool) or failed_writes(spool):  # writes left for another store: refuse before writing here
            resolve_target(spool, spec.tracking.uri, command=f"hpo sync {spec.name}",
                           given_as="this study's tracking URI (tracking.uri or --tracking-uri)")
        # data next: a bad dataset is an error before anything is written
        self.dataset = ds = load_spec_dataset(spec)
        if spec.is_factory_model:  # the user's factory builds a model of the right shape, or nothing runs
            from hpo.models import check_build

            check_build(spec, ds.input_shape, ds.n_classes or 1)
        folds = make_folds(ds.y_train, spec.cv.folds, spec.search.seed, spec.task == "classification",
                           ds.class_names)
        self.device = resolve_device(spec.execution.device)
        # pack_folds: true on a model that cannot stack is exit 2 here, before anything is written
        self.pack, self.pack_note = study_packing(spec, ds.input_shape, ds.n_classes or 1, self.device)
        check_reachable(spec.tracking.uri)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with store_lock(spec.tracking.uri):
            storage = open_storage(self.storage_url)
            # the other study of a warm start is checked before this one is created: a mismatch writes nothing
            warm = warm_start_configs(spec, storage) if not self.resume else []
            self.study = open_study(spec, storage, self.storage_url, resume=self.resume,
                                    concurrency=spec.execution.max_concurrent_trials)
            enqueue_first(self.study, spec, warm)
            self.tracker = Tracker(spec.tracking.uri, spec.experiment, spec.name,
                                   outage_timeout=spec.tracking.outage_timeout)
            self.tracker.sync_spool()
            known_parent = self.tracker.real_id(self.study.user_attrs.get(PARENT_RUN_ATTR))
            if self._is_finished():
                self.parent_id = known_parent or self.tracker.find_study_run()
                return
            tags = {**lineage_tags(spec), PACKED_TAG: self.pack_note}
            self.parent_id = self.tracker.start_study(spec, study_settings(spec), tags, reuse=self.resume,
                                                      parent_id=known_parent)
            self.study.set_user_attr(PARENT_RUN_ATTR, self.parent_id)

        self.sink = self.tracker.epoch_sink(self.study, spec.curve_key, spec.tracking.curve_flush_s)
        self.executor = self._executor(TrainingSet(ds.x_train, ds.y_train, ds.n_classes, folds,
                                                   standardize=spec.data.standardize,
                                                   objective=spec.model if spec.is_objective else None))
        self.loop = SearchLoop(spec, self.study, self.tracker, self.executor, ds, interrupts=self.interrupts,
                               progress=self.progress, started=self._started, pack=self.pack,
                               on_best=self._on_best if self.notifier is not None else None,
                               bookkeeping=bookkeeping_threads(spec, self.storage_url))
        for t in requeue_interrupted(self.study):  # on resume: their runs close KILLED, their params run again
            run_id = self.tracker.real_id(t.user_attrs.get(RUN_ID_ATTR))
            if run_id:
                try:
                    self.tracker.kill_run(run_id)
                except Exception:  # noqa: S110 - the run may not exist any more; the trial re-runs either way
                    pass
        stored = self.study.get_trials(deepcopy=False)
        self.loop.know_complete([t for t in stored if t.state == optuna.trial.TrialState.COMPLETE])
        self.loop.know_finished(stored)

    def _executor(self, training: TrainingSet):
        """The executor the spec asks for, with the training data placed where its trials run."""
        from hpo.epochs import SinkConfig
        from hpo.executors import make_executor

        spec = self.spec
        config = SinkConfig(tracking_uri=spec.tracking.uri, storage_url=self.storage_url, study_name=spec.name,
                            key=spec.curve_key, pruner=spec.search.pruner,
                            outage_timeout=spec.tracking.outage_timeout, spool=str(self.tracker.spool),
                            flush_s=spec.tracking.curve_flush_s)
        executor, self._started_ray = make_executor(spec, training, sink=self.sink, sink_config=config,
                                                    device=self.device, code_dirs=self._code_dirs())
        return executor

    def _code_dirs(self) -> list[str]:
        """Where the spec's user code is imported from (spec folder, working directory), when it has any."""
        from hpo.usercode import search_dirs

        spec = self.spec
        return [str(d) for d in search_dirs(spec.path)] if spec.user_code() else []

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
        done = finished_count(self.study)
        rec = finished_record(self.study.user_attrs, done)
        if rec is None or done < self.target:
            return False
        if self.spec.tracking.report and self.study.user_attrs.get(REPORT_ATTR) != done:
            return False  # interrupted while drawing the report: finish it
        self.already_finished, self._refit_record = True, rec
        return True

    # ------------------------------------------------------------------ the phases

    def _on_signal(self) -> None:
        """First Ctrl-C / SIGTERM during the search: no new trials; running ones stop after their epoch."""
        from hpo.loop import SIGNAL

        if self.loop is not None:
            self.loop.stop(SIGNAL)

    def run(self, n_trials: int | None = None) -> StudyResult:
        """Run trials until ``n_trials`` are finished (or the timeout / a signal), then refit and test.

        A signal in any phase (set-up, trials, refit, model logging, report) ends the parent run
        KILLED and returns an interrupted result; ``--resume`` continues from what is stored.
        """
        self._started = time.perf_counter()
        self.target = self._target(n_trials)
        self.interrupts = Interrupts(on_stop=self._on_signal)
        self.interrupts.install()
        from hpo.trial_logs import study_log

        with study_log(self.spec.tracking.log_max_kb * 1024) as self.driver_log:
            if self.driver_log is not None:
                import hpo

                self.driver_log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} study {self.spec.name}: hpo run "
                                      f"{self.spec.path or '(a Spec)'}{' --resume' if self.resume else ''} "
                                      f"(hpo {hpo.__version__})\n")
            self.notifier = _notifier(self.spec)
            return self._run_logged()

    def _run_logged(self) -> StudyResult:
        """:meth:`run` while the driver's log is kept (``logs/study.log``)."""
        try:
            try:
                self._prepare()
                if self.already_finished:
                    self.interrupts.check()
                    rec = self._refit_record
                    return self._result(Finale(rec.get("model_uri"), rec.get("registered"), rec.get("test_metrics", {})))
                # the set-up's objects (MLflow, SQLAlchemy, Optuna, torch: ~10^6 of them) live to the end: keeping
                # them out of the garbage collector's full passes saves ~0.2-0.35 s per pass (BENCHMARKS.md);
                # a caller's own frozen objects (gc.freeze before a fork, say) are left as they are
                self._froze = gc.get_freeze_count() == 0
                if self._froze:
                    gc.freeze()
                return self._notified(self._run_phases())
            except (KeyboardInterrupt, Interrupted):
                with self.interrupts.closing():
                    return self._notified(self._stopped())
            except Exception as exc:
                self._notify("failed", reason=f"{type(exc).__name__}: {exc}"[:1000])
                self._log_driver()
                raise
        finally:
            if self.notifier is not None:
                self.notifier.close()
            with self.interrupts.closing():
                if getattr(self, "_froze", False):
                    gc.unfreeze()
                if self.executor is not None:
                    self.executor.close()
                if self._started_ray:
                    import ray

                    ray.shutdown()
            self.interrupts.restore()

    def _search(self) -> bool:
        """The search loop; returns True when it stopped because tracking was lost."""
        self.loop.run(self.target, finished_count(self.study))
        return self.loop.tracking_lost

    def _run_phases(self) -> StudyResult:
        """Search, then refit, log and report; each phase is entered only if no signal came before it."""
        from hpo.loop import TRACKING
        from hpo.outbox import is_outage
        from hpo.tracking.names import STOP_REASON_TAG

        self.interrupts.enter("search")
        lost = self._search()
        self.interrupts.check()  # a first Ctrl-C during the search: the trials stopped, now the study does
        self.stop_reason = None if lost else self.loop.stop_reason(self.target)
        if self.stop_reason:
            self.tracker.tag_study(STOP_REASON_TAG, self.stop_reason)
        if not lost and not self.tracker.drain(self.tracker.grace_left()):
            self.loop.stop(TRACKING)  # the server did not come back before the refit: resume refits later
            lost = True
        if lost:
            self.tracker.end_study("KILLED")
            return self._settle(self._result(Finale(), interrupted=True))
        try:
            done = self._finale()
        except (KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:
            if not is_outage(exc):
                self._fail_study(exc)
            self.tracker.went_down(exc)
            self.loop.stop(TRACKING)
            self.tracker.end_study("KILLED")
            return self._settle(self._result(Finale(), interrupted=True))
        self.tracker.end_study("FINISHED")
        return self._settle(self._result(done))

    def _finale(self) -> Finale:
        """Refit the best trial (unless this study already did, for the same trials), then the report."""
        from hpo.refit import finale

        return finale(self.study, self.spec, self.dataset, self.executor, self.tracker, self.parent_id,
                      self.interrupts)

    def _stopped(self) -> StudyResult:
        """After a signal: close every trial still open and the parent run (KILLED); resume continues."""
        if self.loop is not None:
            self.loop.abandon()
        tracker = self.tracker
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
        return self._settle(self._result(Finale(), interrupted=True))

    def _fail_study(self, exc: Exception) -> None:
        """The search finished but the refit, model logging or report failed: the parent run ends
        FAILED with the reason, and the error says how to retry (``--resume`` refits again)."""
        from hpo.errors import NoFeasibleTrial, RefitError

        if isinstance(exc, NoFeasibleTrial):  # the run was fine and the answer is "nothing qualifies"
            self.tracker.fail_study(str(exc))
            raise exc
        reason = f"{type(exc).__name__}: {exc}"
        try:
            self.tracker.fail_study(f"refit failed: {reason}")
        except Exception as inner:
            log.warning("could not mark the study's run failed: %s", inner)
        done = finished_count(self.study)
        raise RefitError(f"the {done} trials of study {self.spec.name!r} are saved, but refitting the best one "
                         f"failed: {reason}. Fix the cause, then refit with: hpo run {self.spec.path or 'SPEC'} "
                         "--resume (set HPO_DEBUG=1 to see the traceback)") from exc

    # ------------------------------------------------------------------ notifications (tracking.notify)

    def _notify(self, event: str, **extra: Any) -> None:
        """Post ``event`` with the study's state now, when ``tracking.notify`` asks for it."""
        if self.notifier is None or not self.notifier.wants(event) or self.tracker is None:
            return
        from hpo.notify import payload
        from hpo.selection import chosen

        try:
            best = chosen(self.study, self.spec)[0]
            doc = payload(event, study=self.spec.name, metric=self.spec.metric, direction=self.spec.direction,
                          best_value=None if best is None else best.values[0],
                          best_trial=None if best is None else best.number, counts=counts(self.study),
                          parent_run_id=self.tracker.real_id(getattr(self, "parent_id", None)) or "",
                          experiment_id=self.tracker.experiment_id, tracking_uri=self.spec.tracking.uri, **extra)
        except Exception as exc:  # noqa: BLE001 - a notification never fails a study
            log.warning("tracking.notify: could not describe the %s event: %s", event, exc)
            return
        self.notifier.post(doc)

    def _notified(self, result: StudyResult) -> StudyResult:
        """Post the end of the study: finished, or interrupted with why (a signal, the tracking server gone)."""
        if result.interrupted:
            self._notify("interrupted", reason="the tracking server was unreachable" if result.tracking_lost
                         else "stopped by a signal")
        elif not result.already_finished:
            self._notify("finished", model=result.registered_model, test_metrics=result.test_metrics)
        return result

    def _on_best(self, result: TrialResult) -> None:
        """A trial beat the best so far (the search loop calls this)."""
        self._notify("new_best", trial=result.number, value=result.value)

    # ------------------------------------------------------------------ results

    def _settle(self, result: StudyResult) -> StudyResult:
        """This run's compute on the parent run, then a last try to send waiting writes; what still waits, or
        was refused, is reported with where it is kept."""
        if self.loop is not None and getattr(self, "parent_id", None):
            self._log_compute(result.duration_s)
            self._log_driver()
        waiting, refused = self.tracker.settle()
        result.tracking_waiting = waiting
        result.spool = str(self.tracker.spool) if waiting else None
        result.tracking_uri = self.spec.tracking.uri
        result.tracking_lost = (self.loop is not None and self.loop.tracking_lost) or bool(waiting)
        result.tracking_failed = refused
        return result

    def _log_driver(self) -> None:
        """The driver's log so far as the parent run's ``logs/study.log`` (when there is a parent run)."""
        from hpo.tracking.names import STUDY_LOG

        if self.driver_log is None or self.tracker is None or not getattr(self, "parent_id", None):
            return
        try:
            self.tracker.log_parent_text(self.driver_log.text(), STUDY_LOG)
        except Exception as exc:  # noqa: BLE001 - the study's result stands without it
            log.warning("could not log the study's log: %s", exc)

    def _log_compute(self, wall_s: float) -> None:
        """``study/*`` metrics (:func:`hpo.resources.study_compute`) of this invocation, on the parent run."""
        from hpo.resources import study_compute

        ex = self.spec.execution
        share = ex.gpus_per_trial if ex.executor == "ray" and ex.gpus_per_trial > 0 else 1.0
        metrics = study_compute(self.loop.results, self.loop.busy, wall_s, share)
        try:
            self.tracker.log_study_metrics(metrics)
        except Exception as exc:  # noqa: BLE001 - the study's result stands without them
            log.warning("could not log the study's compute metrics: %s", exc)

    def _result(self, done: Finale, interrupted: bool = False) -> StudyResult:
        from hpo.selection import chosen

        best, why = chosen(self.study, self.spec)
        bn, bv, bp = (best.number, best.values[0], dict(best.params)) if best is not None else (None, None, {})
        return StudyResult(
            name=self.spec.name, metric=self.spec.metric, direction=self.spec.direction, best_number=bn,
            best_value=bv, best_params=bp, test_metrics=done.test_metrics, counts=counts(self.study),
            parent_run_id=getattr(self, "parent_id", None) or "", experiment_id=self.tracker.experiment_id,
            model_uri=done.model_uri, registered_model=done.registered, duration_s=time.perf_counter() - self._started,
            trials=self.loop.results if self.loop is not None else [], interrupted=interrupted,
            already_finished=self.already_finished, stop_reason=getattr(self, "stop_reason", None),
            selected=why if self.spec.is_multi and best is not None else None,
        )


def _notifier(spec: Spec) -> Any:
    """The study's :class:`~hpo.notify.Notifier`, when ``tracking.notify`` is set."""
    n = spec.tracking.notify
    if n is None:
        return None
    from hpo.notify import Notifier

    return Notifier(n.url_env, n.on, n.timeout)


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
