"""Where a running trial's epochs go: MLflow curves and Optuna's pruner, in one place.

A trial calls ``EpochSink.epoch`` after every epoch, wherever it runs. Locally the sink is
a plain object in the driver; on Ray it is an actor pinned to the driver's node, so
workers need neither the MLflow store nor the Optuna storage, only the sink's handle.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any


class EpochSink:
    """Logs each epoch's metrics to the trial's MLflow run (one batch, through the study's
    :class:`~hpo.outbox.Outbox`) and reports the fold-mean metric to Optuna; answers whether
    the trial should stop (pruned, the study is stopping, or the tracking server is gone)."""

    def __init__(self, outbox: Any, study: Any, metric: str) -> None:
        self.outbox = outbox
        self.study = study
        self.key = f"val_{metric}"
        self._trials: OrderedDict[int, Any] = OrderedDict()
        self._attempts: dict[int, int] = {}
        self._stop = False

    @classmethod
    def open(cls, tracking_uri: str, storage_url: str, study_name: str, metric: str, spec: Any,
             spool: str | None = None) -> EpochSink:
        """Open its own MLflow client, outbox (spool folder ``spool``) and Optuna study (inside the Ray actor)."""
        import optuna
        from mlflow import MlflowClient

        from hpo.outbox import Outbox, apply_http_defaults
        from hpo.sqlite_store import use_wal
        from hpo.study import _pruner, _storage

        use_wal(tracking_uri)
        apply_http_defaults(tracking_uri)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=study_name, storage=_storage(storage_url), pruner=_pruner(spec))
        outbox = Outbox(MlflowClient(tracking_uri=tracking_uri), spool, grace_s=spec.tracking.outage_timeout, role="s")
        return cls(outbox, study, metric)

    def _trial(self, number: int):
        import optuna

        trial = self._trials.get(number)
        if trial is None:
            storage = self.study._storage
            trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
            trial = self._trials[number] = optuna.trial.Trial(self.study, trial_id)
            while len(self._trials) > 256:  # finished trials fall out; running ones are recent
                self._trials.popitem(last=False)
        return trial

    def begin(self, number: int) -> int:
        """A worker starts trial ``number``; returns the attempt (0 first, 1 on the first retry, ...)."""
        attempt = self._attempts.get(number, -1) + 1
        self._attempts[number] = attempt
        return attempt

    def epoch(self, number: int, run_id: str | None, epoch: int, metrics: dict[str, float]) -> bool:
        """Record one epoch; True means stop the trial now."""
        if run_id:
            ts = int(time.time() * 1000)
            self.outbox.log_batch(run_id, metrics=[(k, float(v), ts, epoch) for k, v in metrics.items()])
            if self.outbox.pending:
                self.outbox.flush()
                if self.outbox.gave_up:
                    self._stop = True
        trial = self._trial(number)
        if epoch not in trial._cached_frozen_trial.intermediate_values:  # a retried trial re-reports its epochs
            trial.report(metrics[self.key], epoch)
        return self._stop or trial.should_prune()

    def stop(self) -> None:
        """From now on every trial is told to stop after its current epoch."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop
