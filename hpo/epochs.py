"""Where a running trial's epochs go: MLflow curves and Optuna's pruner, in one place.

A trial calls ``EpochSink.epoch`` after every epoch and ``EpochSink.end`` when it stops,
wherever it runs. Locally the sink is a plain object in the driver; on Ray it is an actor
pinned to the driver's node, so workers need neither the MLflow store nor the Optuna
storage, only the sink's handle.

Each epoch's fold-mean metric goes to Optuna at once (``trial.report``: the learning curves
of Optuna's plots and dashboard), and the pruner is asked only when the study has one. The
MLflow curves are sent in batches: every :data:`CURVE_FLUSH_S` seconds while a trial runs
(the MLflow UI follows a running trial with that delay), and the points not sent when it ends
go back with the trial's result to be logged in its end-of-trial write; MLflow's cost per
``log_batch`` call is several times its cost per metric, so one call per epoch was the
largest bookkeeping item of a study (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from hpo.trial import Verdict

log = logging.getLogger("hpo")

CURVE_FLUSH_S = 5.0  # seconds between MLflow curve batches of a running trial


def has_pruner(study: Any) -> bool:
    """Whether ``study`` prunes (anything but Optuna's NopPruner): only then is ``should_prune`` asked."""
    import optuna

    return not isinstance(study.pruner, optuna.pruners.NopPruner)


CURVE_ATTR = "hpo.curve"  # a multi-objective trial's first objective per epoch: {"1": value, ...}


def first_objective(trial: Any) -> Any:
    """A copy of a multi-objective ``trial`` (``FrozenTrial``) as a trial of its first objective alone: that
    value, and the per-epoch curve of :data:`CURVE_ATTR` as its intermediate values."""
    import copy

    t = copy.copy(trial)
    if t.values is not None:
        t.values = [t.values[0]]
    t.intermediate_values = {int(k): v for k, v in trial.user_attrs.get(CURVE_ATTR, {}).items()}
    return t


class FirstObjective:
    """A multi-objective Optuna study as a pruner (or a single-objective plot) sees it: the single-objective
    study of its first objective, each trial with its first value and its :data:`CURVE_ATTR` curve
    (what hpo prunes on, where Optuna does not). Everything else is the study's own."""

    def __init__(self, study: Any) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[Any]:  # noqa: D102
        return [first_objective(t) for t in self._study.get_trials(deepcopy=False, states=states)]

    @property
    def direction(self) -> Any:  # noqa: D102
        return self._study.directions[0]

    @property
    def directions(self) -> list[Any]:  # noqa: D102
        return [self._study.directions[0]]

    def _is_multi_objective(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


@dataclass(frozen=True)
class SinkConfig:
    """What a sink needs to open its own connections (inside the Ray actor): small and picklable."""

    tracking_uri: str
    storage_url: str  # Optuna's storage
    study_name: str
    key: str  # the epoch metric the pruner sees (Spec.curve_key: val_accuracy, or a user objective's metric)
    pruner: str  # search.pruner
    outage_timeout: float  # tracking.outage_timeout
    spool: str | None = None  # the study's outbox spool folder
    flush_s: float = CURVE_FLUSH_S  # seconds between curve batches of a running trial


class EpochSink:
    """Logs each epoch's metrics to the trial's MLflow run (batched, through the study's
    :class:`~hpo.outbox.Outbox`) and reports the fold-mean metric to Optuna; answers each epoch
    with a :class:`~hpo.trial.Verdict`: go on, prune, or stop (the study is stopping, or the
    tracking server has been gone too long)."""

    def __init__(self, outbox: Any, study: Any, key: str, flush_s: float = CURVE_FLUSH_S) -> None:
        self.outbox = outbox
        self.study = study
        self.key = key  # the fold-mean metric reported to Optuna (Spec.curve_key)
        self.flush_s = flush_s
        self.prunes = has_pruner(study)
        self.multi = len(study.directions) > 1  # pruned on the first objective (FirstObjective)
        self._trials: OrderedDict[int, Any] = OrderedDict()
        self._attempts: dict[int, int] = {}
        self._curves: dict[str, list[tuple[str, float, int, int]]] = {}  # run id -> metrics not sent yet
        self._sent_at: dict[str, float] = {}
        self._lock = threading.Lock()  # local trials on a thread pool share the sink
        self._stop = False

    @classmethod
    def open(cls, config: SinkConfig) -> EpochSink:
        """Open its own MLflow client, outbox and Optuna study (inside the Ray actor)."""
        import optuna

        from hpo.search import open_storage, pruner
        from hpo.tracking import curve_log

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage_url),
                                  pruner=pruner(config.pruner))
        outbox = curve_log(config.tracking_uri, config.spool, config.outage_timeout)
        return cls(outbox, study, config.key, flush_s=config.flush_s)

    def _trial(self, number: int):
        import optuna

        with self._lock:
            trial = self._trials.get(number)
            if trial is None:
                storage = self.study._storage
                trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
                trial = self._trials[number] = optuna.trial.Trial(self.study, trial_id)
                while len(self._trials) > 256:  # finished trials fall out; running ones are recent
                    self._trials.popitem(last=False)
            return trial

    def begin(self, number: int, run_id: str | None = None) -> int:
        """A worker starts trial ``number``; returns the attempt (0 first, 1 on the first retry, ...).

        Curves of an earlier attempt that were not sent yet are dropped: the retry reports its
        epochs again."""
        with self._lock:
            attempt = self._attempts.get(number, -1) + 1
            self._attempts[number] = attempt
            if run_id:
                self._curves.pop(run_id, None)
                self._sent_at[run_id] = time.monotonic()
        return attempt

    def epoch(self, number: int, run_id: str | None, epoch: int, metrics: dict[str, float]) -> Verdict:
        """Record one epoch; the answer says whether the trial goes on."""
        if run_id:
            ts, now = int(time.time() * 1000), time.monotonic()
            with self._lock:
                self._curves.setdefault(run_id, []).extend((k, float(v), ts, epoch) for k, v in metrics.items())
                due = now - self._sent_at.setdefault(run_id, now) >= self.flush_s
            if due:
                self._send(run_id)
            if self.outbox.pending:
                self.outbox.flush()
                if self.outbox.gave_up:
                    self._stop = True
        trial = self._trial(number)
        value = metrics.get(self.key)  # a user objective may report an epoch without it: nothing to prune on
        if self.multi:
            return self._epoch_multi(trial, epoch, value)
        if value is not None and epoch not in trial._cached_frozen_trial.intermediate_values:  # a retry re-reports
            trial.report(value, epoch)
        if self._stop:
            return Verdict.STOP
        return Verdict.PRUNE if value is not None and self.prunes and trial.should_prune() else Verdict.GO

    def _epoch_multi(self, trial: Any, epoch: int, value: float | None) -> Verdict:
        """A multi-objective trial's epoch. Optuna refuses intermediate values there (``Trial.report``), and its
        samplers assume pruned trials have none; so the first objective's fold mean per epoch is kept in the
        trial's :data:`CURVE_ATTR`, and the pruner sees the study as the single-objective study of its first
        objective with those curves (:class:`FirstObjective`)."""
        storage = self.study._storage
        if value is not None:
            curve = storage.get_trial(trial._trial_id).user_attrs.get(CURVE_ATTR, {})
            if str(epoch) not in curve:  # a retry re-reports
                storage.set_trial_user_attr(trial._trial_id, CURVE_ATTR, {**curve, str(epoch): float(value)})
        if self._stop:
            return Verdict.STOP
        if value is None or not self.prunes:
            return Verdict.GO
        view = FirstObjective(self.study)
        frozen = first_objective(storage.get_trial(trial._trial_id))
        return Verdict.PRUNE if self.study.pruner.prune(view, frozen) else Verdict.GO

    def end(self, number: int, run_id: str | None) -> list[tuple[str, float, int, int]]:
        """Trial ``number`` stopped (finished, pruned or failed): returns the curve points it has not
        sent yet, for the caller to log with the trial's end metrics in one MLflow write
        (:attr:`~hpo.trial.TrialResult.curves`, :meth:`~hpo.tracking.Tracker.end_trial`)."""
        if not run_id:
            return []
        with self._lock:
            self._sent_at.pop(run_id, None)
            return self._curves.pop(run_id, [])

    def _send(self, run_id: str) -> None:
        with self._lock:
            batch = self._curves.pop(run_id, [])
            self._sent_at[run_id] = time.monotonic()
        self.outbox.log_batches(run_id, batch)

    def stop(self) -> None:
        """From now on every trial is told to stop after its current epoch."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        """Whether trials are being told to stop (:meth:`stop`, or the tracking server is gone)."""
        return self._stop

    @property
    def tracking_lost(self) -> bool:
        """Whether this sink's outbox gave up on the tracking server (its trials are told to stop)."""
        return self.outbox.gave_up

    def flush(self) -> int:
        """Try once more to send waiting tracking writes; returns how many still wait."""
        self.outbox.flush(force=True)
        return self.outbox.pending
