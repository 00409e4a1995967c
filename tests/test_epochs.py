"""The epoch sink: Optuna gets every epoch at once, MLflow gets the curves in batches (the last
with the trial's end metrics)."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

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
    # the points not sent come back from the end, for the trial's end-of-trial write (Tracker.end_trial)
    unsent = sink.end(trial.number, run_id)
    assert sorted((k, e) for k, _v, _ts, e in unsent) == sorted((k, e) for e in range(1, 6) for k in _metrics(e))
    assert client.get_metric_history(run_id, "val_accuracy") == []
    assert sink.end(trial.number, run_id) == []  # given back once


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
    assert sorted((k, e) for k, _v, _ts, e in sink.end(trial.number, run_id)) == sorted((k, 2) for k in _metrics(2))
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1]


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


def test_a_short_trial_writes_its_run_in_two_batches_the_last_curves_with_its_end(write_spec, store, monkeypatch):
    """A trial shorter than ``tracking.curve_flush_s``: one ``log_batch`` with its parameters as it starts, one
    with its whole curves, end metrics and state as it ends (not a third for the curves alone)."""
    import hpo
    from hpo.outbox import Outbox

    batches: dict[str, list[dict]] = {}
    real = Outbox.log_batch

    def counted(self, run_id, metrics=(), params=None, tags=None):
        batches.setdefault(run_id, []).append({"metrics": list(metrics), "params": dict(params or {}),
                                               "tags": dict(tags or {})})
        return real(self, run_id, metrics, params, tags)

    monkeypatch.setattr(Outbox, "log_batch", counted)
    spec = write_spec("""
        name: writes
        data: {dataset: iris}
        model: mlp
        search: {sampler: random, n_trials: 3, seed: 0}
        cv: {folds: 2}
        params: {lr: 0.05, width: 8, epochs: 4}
        tracking: {curve_flush_s: 3600}  # longer than any trial, however loaded the machine
    """)
    result = hpo.run(spec, tracking_uri=store)
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`hpo.role` = 'trial' and tags.`hpo.study` = '{result.name}'")
    assert len(runs) == 3
    for run in runs:
        start, end = batches[run.info.run_id]
        assert start["params"] and not start["metrics"]
        assert end["tags"]["hpo.state"] == "complete"
        assert {e for k, _v, _ts, e in end["metrics"] if k == "val_accuracy"} == {1, 2, 3, 4}
        assert [m.step for m in sorted(client.get_metric_history(run.info.run_id, "fold1/train_loss"),
                                       key=lambda m: m.step)] == [1, 2, 3, 4]

    # tracking.curve_flush_s: 0 sends every epoch as it comes; the end then holds no curve point
    batches.clear()
    every = write_spec(spec.read_text().replace("name: writes", "name: writes-every-epoch")
                       .replace("curve_flush_s: 3600", "curve_flush_s: 0"), "every")
    hpo.run(every, tracking_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.`hpo.role` = 'trial' and tags.`hpo.study` = 'writes-every-epoch'")
    assert len(runs) == 3
    for run in runs:
        sent = batches[run.info.run_id]
        assert [sorted({e for k, _v, _ts, e in b["metrics"] if k == "val_accuracy"}) for b in sent] == \
            [[], [1], [2], [3], [4], []]


def test_more_unsent_points_than_one_batch_holds_are_split_and_all_logged(store):
    from hpo.trial import TrialResult

    tracker = Tracker(store, "exp", "s")
    tracker.parent_id = tracker.out.create_run(tracker.experiment_id, "s", {})
    run_id = tracker.start_trial(0, {"lr": 0.1}, {"lr": 0.1})
    curves = [(f"fold{f}/val_accuracy", 0.001 * e, 1_000 + e, e) for f in range(3) for e in range(1, 501)]
    result = TrialResult(number=0, state="complete", value=0.5, fold_values=[0.5], fold_best_epochs=[3], curves=curves)
    tracker.end_trial(run_id, result, "accuracy")
    for f in range(3):
        assert [m.step for m in sorted(tracker.client.get_metric_history(run_id, f"fold{f}/val_accuracy"),
                                       key=lambda m: m.step)] == list(range(1, 501))
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["hpo.state"] == "complete"


def test_curve_points_mlflow_refuses_leave_the_trials_end_logged(store, caplog):
    """A user objective's curve key MLflow does not accept ("acc (%)"): the trial's end metrics and state are
    still logged and its run closed, with a warning naming what was refused."""
    from hpo.trial import TrialResult

    tracker = Tracker(store, "exp", "s")
    tracker.parent_id = tracker.out.create_run(tracker.experiment_id, "s", {})
    run_id = tracker.start_trial(0, {"lr": 0.1}, {"lr": 0.1})
    result = TrialResult(number=0, state="complete", value=0.5, fold_values=[0.5], fold_best_epochs=[1],
                         curves=[("acc (%)", 50.0, 1_000, 1)])
    with caplog.at_level("WARNING", logger="hpo"):
        tracker.end_trial(run_id, result, "accuracy")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["hpo.state"] == "complete"
    assert run.data.metrics["cv_accuracy_mean"] == 0.5 and "acc (%)" not in run.data.metrics
    assert "trial 0: its last curve points could not be logged" in caplog.text and "acc (%)" in caplog.text
