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
    """Logs each epoch's metrics to the trial's MLflow run (one batch) and reports the
    fold-mean metric to Optuna; answers whether the trial should stop (pruned or the study
    is stopping)."""

    def __init__(self, client: Any, study: Any, metric: str) -> None:
        self.client = client
        self.study = study
        self.key = f"val_{metric}"
        self._trials: OrderedDict[int, Any] = OrderedDict()
        self._attempts: dict[int, int] = {}
        self._stop = False

    @classmethod
    def open(cls, tracking_uri: str, storage_url: str, study_name: str, metric: str, spec: Any) -> EpochSink:
        """Open its own MLflow client and Optuna study (used inside the Ray actor)."""
        import optuna
        from mlflow import MlflowClient

        from hpo.study import _pruner, _storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=study_name, storage=_storage(storage_url), pruner=_pruner(spec))
        return cls(MlflowClient(tracking_uri=tracking_uri), study, metric)

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
        from mlflow.entities import Metric

        if run_id:
            ts = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, epoch) for k, v in metrics.items()])
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
