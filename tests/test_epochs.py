"""The epoch sink: Optuna gets every epoch at once, MLflow gets the curves in batches."""

from __future__ import annotations

import optuna
import pytest

from hpo.epochs import EpochSink
from hpo.search import open_storage
from hpo.tracking import Tracker
from hpo.trial import Verdict


@pytest.fixture
def parts(store, tmp_path):
    tracker = Tracker(store, "exp", "s")
    storage = open_storage(f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")

    def make(pruner, flush_s):
        study = optuna.create_study(storage=storage, pruner=pruner, direction="maximize")
        trial = study.ask()
        run_id = tracker.out.create_run(tracker.experiment_id, "t", {})
        return EpochSink(tracker.out, study, "val_accuracy", flush_s=flush_s), study, trial, run_id

    return tracker.client, make


def _metrics(epoch: int) -> dict[str, float]:
    return {"val_accuracy": 0.1 * epoch, "fold0/val_accuracy": 0.1 * epoch, "train_loss": 1.0 / epoch}


def test_curves_wait_for_the_flush_interval_and_all_arrive_at_the_end(parts):
    client, make = parts
    sink, study, trial, run_id = make(optuna.pruners.NopPruner(), flush_s=3600)
    assert sink.prunes is False
    sink.begin(trial.number, run_id)
    for epoch in range(1, 6):
        assert sink.epoch(trial.number, run_id, epoch, _metrics(epoch)) is Verdict.GO
    assert client.get_metric_history(run_id, "val_accuracy") == []  # batched, not sent per epoch
    # Optuna has every epoch at once (its plots and dashboard follow the trial live)
    assert study.trials[0].intermediate_values == {e: pytest.approx(0.1 * e) for e in range(1, 6)}
    sink.end(trial.number, run_id)
    for key in ("val_accuracy", "fold0/val_accuracy", "train_loss"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4, 5]


def test_a_zero_interval_sends_every_epoch_and_a_retry_drops_unsent_curves(parts):
    client, make = parts
    sink, _study, trial, run_id = make(optuna.pruners.NopPruner(), flush_s=0)
    assert sink.begin(trial.number, run_id) == 0
    sink.epoch(trial.number, run_id, 1, _metrics(1))
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1]

    sink.flush_s = 3600
    sink.epoch(trial.number, run_id, 2, _metrics(2))  # the attempt dies before sending epoch 2 ...
    assert sink.begin(trial.number, run_id) == 1  # ... and is retried: its unsent curves are dropped
    sink.epoch(trial.number, run_id, 2, _metrics(2))
    sink.end(trial.number, run_id)
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2]


def test_the_pruner_is_asked_only_when_the_study_has_one(parts):
    _client, make = parts
    sink, study, trial, run_id = make(optuna.pruners.ThresholdPruner(lower=0.25), flush_s=3600)
    assert sink.prunes is True
    answers = [sink.epoch(trial.number, run_id, e, _metrics(e)) for e in range(1, 4)]
    assert answers == [Verdict.PRUNE, Verdict.PRUNE, Verdict.GO]  # 0.1 and 0.2 are below the threshold
    sink.stop()
    assert sink.stopping and not sink.tracking_lost
    # a stopping study stops every trial: STOP (not PRUNE), so the trial ends KILLED and is re-queued
    assert sink.epoch(trial.number, run_id, 4, _metrics(4)) is Verdict.STOP
    assert study.trials[0].intermediate_values[4] == pytest.approx(0.4)
