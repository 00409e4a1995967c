"""The training loop and a single trial, on real data and real models (no mocks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpo.crossval import FoldData, run_trial
from hpo.data import load_dataset
from hpo.folds import make_folds
from hpo.params import PARAMS, default_value
from hpo.training import Data, Learner, augment_batch, evaluate
from hpo.trial import COMPLETE, FAILED, KILLED, PRUNED, TrainingSet, TrialSpec, Verdict


def params(model: str = "mlp", **kw):
    p = {name: default_value(name, model) for name in PARAMS}
    p.update(kw)
    return p


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def digits_training(digits):
    folds = make_folds(digits.y_train, 3, seed=0, stratified=True)
    return TrainingSet(digits.x_train, digits.y_train, digits.n_classes, folds)


@pytest.fixture(scope="module")
def digits_folds(digits_training):
    return FoldData.build(digits_training, "cpu")


def test_training_lowers_the_loss(digits):
    data = Data.from_arrays(digits.x_train, digits.y_train, digits.n_classes, "cpu")
    learner = Learner(data, torch.arange(len(data.x)), "mlp", params(lr=1e-2, epochs=5), seed=0,
                      direction="maximize", epochs=5)
    losses = [learner.train_epoch() for _ in range(5)]
    assert losses[-1] < losses[0] * 0.3
    test = Data.from_arrays(digits.x_test, digits.y_test, digits.n_classes, "cpu")
    assert evaluate(learner, test, ["accuracy"])["accuracy"] > 0.9


@pytest.mark.parametrize("model,extra", [("cnn", {"depth": 1, "width": 8}), ("resnet", {"depth": 20, "width": 4})])
def test_image_models_train_on_digits(digits, model, extra):
    data = Data.from_arrays(digits.x_train[:400], digits.y_train[:400], digits.n_classes, "cpu")
    p = params(model, lr=5e-3, batch_size=64, augment=True, scheduler="cosine", **extra)
    learner = Learner(data, torch.arange(len(data.x)), model, p, seed=0, direction="maximize", epochs=3)
    losses = [learner.train_epoch() for _ in range(3)]
    assert losses[-1] < losses[0]


def test_trial_scores_mean_of_fold_best_epochs(digits_folds):
    seen = []
    spec = TrialSpec(0, params(lr=1e-2, epochs=4), "mlp", "accuracy", "maximize", seed=0)
    result = run_trial(spec, digits_folds, lambda epoch, m: seen.append((epoch, m)) or Verdict.GO)
    assert result.state == COMPLETE
    assert result.epochs_trained == 4 and [e for e, _ in seen] == [1, 2, 3, 4]
    assert set(seen[0][1]) >= {"val_accuracy", "train_loss", "fold0/val_accuracy", "fold2/train_loss"}
    # the value is the mean over folds of each fold's best epoch, not the last epoch's mean
    best = [max(m[f"fold{k}/val_accuracy"] for _, m in seen) for k in range(3)]
    assert result.fold_values == pytest.approx(best)
    assert result.value == pytest.approx(np.mean(best))
    assert len(result.checkpoint["folds"]) == 3


def test_same_seed_same_result(digits_folds):
    spec = TrialSpec(3, params(lr=1e-2, epochs=2, dropout=0.2), "mlp", "accuracy", "maximize", seed=1)
    a, b = run_trial(spec, digits_folds), run_trial(spec, digits_folds)
    assert a.fold_values == b.fold_values


def test_pruning_stops_the_trial_early(digits_folds):
    spec = TrialSpec(0, params(epochs=10), "mlp", "accuracy", "maximize", seed=0)
    result = run_trial(spec, digits_folds, lambda epoch, m: Verdict.PRUNE if epoch >= 2 else Verdict.GO)
    assert result.state == PRUNED and result.epochs_trained == 2
    assert "pruned after epoch 2" in result.reason


def test_a_stopping_study_ends_the_trial_killed_by_the_worker_itself(digits_folds):
    """STOP (Ctrl-C, lost tracking) is not pruning: the worker's result says KILLED, nobody relabels it."""
    spec = TrialSpec(0, params(epochs=10), "mlp", "accuracy", "maximize", seed=0)
    result = run_trial(spec, digits_folds, lambda epoch, m: Verdict.STOP if epoch >= 3 else Verdict.GO)
    assert result.state == KILLED and result.epochs_trained == 3
    assert result.reason == "stopped by the study after epoch 3"
    assert len(result.fold_values) == 3  # what it learnt so far is kept with it


def test_patience_stops_on_the_fold_mean(digits_folds):
    spec = TrialSpec(0, params(epochs=8, patience=2, lr=1e-7), "mlp", "accuracy", "maximize", seed=0)
    result = run_trial(spec, digits_folds)
    assert result.state == COMPLETE and result.epochs_trained < 8


def test_diverging_loss_fails_at_once(digits_folds):
    spec = TrialSpec(0, params(optimizer="sgd", lr=1e6, momentum=0.99, epochs=20), "mlp", "accuracy", "maximize", 0)
    result = run_trial(spec, digits_folds)
    assert result.state == FAILED
    assert "loss became" in result.reason and "lower lr" in result.reason
    assert result.epochs_trained < 3


def test_exception_inside_a_trial_is_recorded(digits_folds):
    spec = TrialSpec(0, params(optimizer="nonexistent", epochs=2), "mlp", "accuracy", "maximize", 0)
    result = run_trial(spec, digits_folds)
    assert result.state == FAILED and "KeyError" in result.reason


def test_regression_trial_reports_rmse_in_target_units():
    ds = load_dataset("diabetes", seed=0)
    folds = make_folds(ds.y_train, 3, seed=0, stratified=False)
    fd = FoldData.build(TrainingSet(ds.x_train, ds.y_train, 0, folds), "cpu")
    result = run_trial(TrialSpec(0, params(lr=1e-2, epochs=30), "mlp", "rmse", "minimize", 0), fd)
    assert result.state == COMPLETE
    assert 40 < result.value < 80  # diabetes targets span ~25..346; predicting the mean gives ~77
    assert result.value == pytest.approx(np.mean(result.fold_values))


def test_augment_keeps_shape_and_content_scale():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.max() <= x.max() and math.isfinite(float(out.sum()))


def test_local_executor_gives_each_concurrent_trial_its_share_of_threads(digits_training):
    """Trial threads run with threads_per_trial intra-op threads; the caller's setting comes back after."""
    from hpo.executors.local import LocalExecutor

    before = torch.get_num_threads()
    pool = LocalExecutor(digits_training, sink=None, max_concurrency=2, threads_per_trial=1)
    try:
        assert {pool._pool.submit(torch.get_num_threads).result() for _ in range(4)} == {1}
    finally:
        pool.close()
    inline = LocalExecutor(digits_training, sink=None, max_concurrency=1, threads_per_trial=3)
    assert torch.get_num_threads() == 3
    inline.close()
    assert torch.get_num_threads() == before


def test_small_inputs_are_standardised_once_with_the_same_results(digits, monkeypatch):
    import hpo.training as training

    data = Data.from_arrays(digits.x_train, digits.y_train, digits.n_classes, "cpu")
    p = params(lr=1e-2, epochs=2, batch_size=100)  # 1,437 rows: the last batch is short

    def train(prescale: bool):
        monkeypatch.setattr(training, "PRESCALE_MAX_VALUES", 2**24 if prescale else 0)
        learner = Learner(data, torch.arange(len(data.x)), "mlp", p, seed=0, direction="maximize", epochs=2)
        assert (learner.x_scaled is not None) == prescale
        losses = [learner.train_epoch() for _ in range(2)]
        out, val_loss = learner.predict(data, torch.arange(200))
        with torch.no_grad():  # the saved model still standardises raw inputs itself
            raw = torch.softmax(learner.model(data.x[:200]), dim=1).numpy()
        return losses, out, val_loss, raw

    once, per_batch = train(True), train(False)
    assert once[0] == per_batch[0]  # same weights, same batch losses, same size-weighted mean
    np.testing.assert_array_equal(once[1], per_batch[1])
    assert once[2] == per_batch[2]
    np.testing.assert_allclose(once[3], once[1], rtol=1e-5, atol=1e-6)

    images = Data.from_arrays(np.zeros((8, 1, 8, 8), np.uint8), np.arange(8) % 2, 2, "cpu")
    monkeypatch.setattr(training, "PRESCALE_MAX_VALUES", 2**24)
    augmented = Learner(images, torch.arange(8), "cnn", params("cnn", augment=True), seed=0, direction="maximize",
                        epochs=1)
    assert augmented.x_scaled is None  # a random crop pads raw (uint8) pixels: scaled per batch after it
