"""``hpo`` as a user runs it: a subprocess, a real store, read back with MlflowClient."""

from __future__ import annotations

import csv
import io

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

import hpo
from hpo.data import load_dataset
from hpo.metrics import compute_metric
from tests.conftest import run_cli

DIGITS = """
name: digits-e2e
data: {dataset: digits}
model: mlp
search: {sampler: tpe, n_trials: 4, seed: 0, metric: accuracy}
cv: {folds: 2}
params:
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  optimizer: [adam, sgd]
  momentum: {low: 0.8, high: 0.95, when: {optimizer: sgd}}
  width: [32, 64]
  epochs: 4
tracking: {keep_checkpoints: 2}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One real end-to-end CLI run, shared by the read-back tests."""
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "spec.yaml").write_text(DIGITS)
    store = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    proc = run_cli("run", "spec.yaml", "--tracking-uri", store, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, store, proc


@pytest.mark.slow
def test_run_prints_progress_and_summary(finished):
    _, _, proc = finished
    assert "trials" in proc.stderr and "4/4" in proc.stderr
    assert "best CV accuracy" in proc.stdout and "test accuracy" in proc.stdout


@pytest.mark.slow
def test_mlflow_layout(finished):
    _, store, _ = finished
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("digits-e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert parent.info.status == "FINISHED"
    # lineage and settings on the parent
    for tag in ("hpo.spec_hash", "hpo.seed", "hpo.version", "torch.version", "optuna.version"):
        assert tag in parent.data.tags
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["folds"] == "2"
    assert {"best_cv_accuracy", "test_accuracy", "test_f1_macro"} <= set(parent.data.metrics)
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec", "checkpoint", "trials.csv"} <= arts
    # child runs: every parameter, curves per epoch, CV summary, state
    for c in children:
        assert {"lr", "optimizer", "width", "epochs", "batch_size", "dropout"} <= set(c.data.params)
        assert ("momentum" in c.data.params) and c.info.run_name.startswith("trial-")
        history = client.get_metric_history(c.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert len(client.get_metric_history(c.info.run_id, "fold1/val_accuracy")) == 4
        assert {"cv_accuracy_mean", "cv_accuracy_std", "train_loss", "duration_s"} <= set(c.data.metrics)
        assert c.data.tags["hpo.state"] == "complete" and c.info.status == "FINISHED"
    # the top keep_checkpoints=2 trials keep their fold weights, the others do not
    kept = [c for c in children if client.list_artifacts(c.info.run_id, "checkpoint")]
    assert len(kept) == 2


@pytest.mark.slow
def test_registered_model_reproduces_the_test_metric(finished):
    _, store, _ = finished
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    exp = client.get_experiment_by_name("digits-e2e")
    parent = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("hpo.role") == "study"][0]
    versions = client.search_model_versions("name='digits-e2e'")
    assert len(versions) == 1
    logged = parent.data.metrics["test_accuracy"]
    ds = load_dataset("digits", seed=0)
    x = torch.from_numpy(np.asarray(ds.x_test, dtype=np.float32))

    model = hpo.load_model(parent.info.run_id, tracking_uri=store)  # weights_only checkpoint
    with torch.no_grad():
        acc = compute_metric("accuracy", ds.y_test, model(x).softmax(1).numpy())
    assert acc == pytest.approx(logged, abs=1e-9)

    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        registered = mlflow.pytorch.load_model(f"models:/digits-e2e/{versions[0].version}")
    finally:  # leave no process-wide MLflow settings behind for the next test in this worker
        tracking_utils._tracking_uri, registry_utils._registry_uri = previous
    with torch.no_grad():
        acc2 = compute_metric("accuracy", ds.y_test, registered(x).softmax(1).numpy())
    assert acc2 == pytest.approx(logged, abs=1e-9)


@pytest.mark.slow
def test_show_lists_trials_best_first(finished):
    tmp, store, _ = finished
    proc = run_cli("show", "digits-e2e", "--tracking-uri", store, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "complete" in proc.stdout and "optimizer" in proc.stdout
    proc = run_cli("show", "digits-e2e", "--tracking-uri", store, "--csv", cwd=tmp)
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    values = [float(r["value"]) for r in rows]
    assert len(rows) == 4 and values == sorted(values, reverse=True)
    missing = run_cli("show", "digits-e3e", "--tracking-uri", store, cwd=tmp)
    assert missing.returncode == 2 and "did you mean 'digits-e2e'" in missing.stderr


@pytest.mark.slow
def test_second_run_without_resume_is_refused(finished):
    tmp, store, _ = finished
    proc = run_cli("run", "spec.yaml", "--tracking-uri", store, cwd=tmp)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr


def test_broken_spec_exits_2_and_writes_nothing(tmp_path):
    (tmp_path / "bad.yaml").write_text(DIGITS.replace("lr: {low: 1.0e-3", "lr: {low: 0.0"))
    before = set(tmp_path.rglob("*"))
    proc = run_cli("run", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "bad.yaml: params.lr.low: must be > 0 when log is true (got 0.0)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert set(tmp_path.rglob("*")) == before


def test_missing_data_file_is_an_error_before_anything_is_written(tmp_path):
    (tmp_path / "s.yaml").write_text("name: c\ndata: {dataset: cifar10, path: nowhere}\nmodel: cnn\n"
                                     "search: {n_trials: 1}\n")
    proc = run_cli("run", "s.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns").exists()


def test_help_lists_commands(tmp_path):
    proc = run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for cmd in ("run", "validate", "show", "ui"):
        assert cmd in proc.stdout
