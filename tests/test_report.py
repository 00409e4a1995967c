"""Study reports: every plot as HTML and PNG on the parent run, importances as metrics, ``hpo report``.

A real iris study into a real sqlite store (read back with ``MlflowClient``); the edge
cases (no trials, one trial, one parameter, failures, 1000 trials, regression) run
``build_report`` on in-memory Optuna studies.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

import hpo
from hpo.cli import main as cli_main
from hpo.data import Dataset, load_dataset
from hpo.report import IMPORTANCE_PREFIX, METRIC_ATTR, REPORT_DIR, build_report, write_report
from hpo.tracking import optuna_storage_for

SPEC = """
name: report-iris
data: {dataset: iris}
model: mlp
search: {sampler: random, n_trials: 6, seed: 3, pruner: median}
cv: {folds: 2}
params:
  lr: {low: 1.0e-4, high: 1.0e-1, log: true}
  width: [8, 16]
  optimizer: [adam, sgd]
  epochs: 3
"""

STUDY_PLOTS = {"optimization_history", "param_importances", "parallel_coordinate", "intermediate_values",
               "slice_lr", "slice_width", "slice_optimizer", "confusion_matrix"}

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report_files(client: MlflowClient, run_id: str) -> dict[str, int]:
    return {Path(a.path).name: a.file_size for a in client.list_artifacts(run_id, REPORT_DIR)}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A finished 6-trial iris study and its report, written by write_report."""
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "spec.yaml").write_text(SPEC)
    store = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    result = hpo.run(tmp / "spec.yaml", tracking_uri=store)
    study = optuna.load_study(study_name=result.name, storage=optuna_storage_for(store))
    client = MlflowClient(store)
    model = hpo.load_model(result.parent_run_id, tracking_uri=store)
    dataset = load_dataset("iris", seed=3)
    started = time.perf_counter()
    importances = write_report(study, client, result.parent_run_id, model=model, dataset=dataset,
                               metric="accuracy", task="classification")
    seconds = time.perf_counter() - started
    return {"tmp": tmp, "store": store, "result": result, "study": study, "client": client,
            "importances": importances, "seconds": seconds}


@pytest.mark.slow
def test_every_plot_is_on_the_parent_run_as_html_and_png(study_run):
    client, run_id = study_run["client"], study_run["result"].parent_run_id
    files = _report_files(client, run_id)
    for plot in STUDY_PLOTS:
        for ext in ("html", "png"):
            assert files.get(f"{plot}.{ext}", 0) > 1000, f"{plot}.{ext} missing or empty: {sorted(files)}"
    local = Path(client.download_artifacts(run_id, REPORT_DIR, str(study_run["tmp"] / "dl")))
    for plot in STUDY_PLOTS:
        assert (local / f"{plot}.png").read_bytes()[:8] == PNG_MAGIC
        html = (local / f"{plot}.html").read_text()
        assert "Plotly.newPlot" in html and "<html" in html
    assert study_run["seconds"] < 30, f"the report took {study_run['seconds']:.1f}s"


@pytest.mark.slow
def test_importances_sum_to_one_and_are_logged_as_metrics(study_run):
    importances = study_run["importances"]
    assert importances and set(importances) <= {"lr", "width", "optimizer"}
    assert math.isclose(sum(importances.values()), 1.0, abs_tol=1e-6)
    assert all(v >= 0 for v in importances.values())
    run = study_run["client"].get_run(study_run["result"].parent_run_id)
    logged = {k[len(IMPORTANCE_PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(IMPORTANCE_PREFIX)}
    assert logged == pytest.approx(importances)
    assert run.data.tags["hpo.importance_evaluator"] == "mean_decrease_impurity"
    saved = json.loads(Path(study_run["client"].download_artifacts(
        run.info.run_id, f"{REPORT_DIR}/importances.json", str(study_run["tmp"] / "imp"))).read_text())
    assert saved["importances"] == pytest.approx(importances)
    # the best params stay logged by the core next to them, so the runs table can sort studies
    assert {f"best_{k}" for k in study_run["result"].best_params} <= set(run.data.params)
    assert study_run["study"].user_attrs[METRIC_ATTR] == "accuracy"


@pytest.mark.slow
def test_hpo_report_rebuilds_the_report_of_an_existing_study(study_run, capsys):
    client, run_id, store = study_run["client"], study_run["result"].parent_run_id, study_run["store"]
    artifacts = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / REPORT_DIR
    shutil.rmtree(artifacts)
    assert _report_files(client, run_id) == {}
    code = cli_main(["report", "report-iris", "--tracking-uri", store])
    out = capsys.readouterr().out
    assert code == 0, out
    files = _report_files(client, run_id)
    for plot in STUDY_PLOTS:  # the confusion matrix too: model and dataset are rebuilt from the run
        assert files.get(f"{plot}.html", 0) > 1000 and files.get(f"{plot}.png", 0) > 1000, plot
    assert "confusion_matrix.png" in out and "importance" in out
    # idempotent: the same importances again (seeded evaluator), same files
    metrics = client.get_run(run_id).data.metrics
    for k, v in study_run["importances"].items():
        assert metrics[f"{IMPORTANCE_PREFIX}{k}"] == pytest.approx(v)


@pytest.mark.slow
def test_hpo_report_unknown_study_is_an_error(study_run, capsys):
    code = cli_main(["report", "report-irs", "--tracking-uri", study_run["store"]])
    assert code == 2 and "did you mean 'report-iris'" in capsys.readouterr().err


# ---------------------------------------------------------------------- edge cases, no training


def _study(n: int, objective=None, direction="maximize", seed=0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=seed))
    if n:
        study.optimize(objective, n_trials=n, catch=(RuntimeError,))
    return study


def _curves(trial, value, epochs=4, prune_after=None):
    for e in range(1, epochs + 1):
        trial.report(value * e / epochs, e)
        if prune_after is not None and e >= prune_after:
            raise optuna.TrialPruned()
    return value


def _plots(report) -> set[str]:
    return {f.rsplit(".", 1)[0] for f in report.files if f.endswith(".png")}


def test_no_trials_writes_nothing_and_does_not_raise(tmp_path):
    report = build_report(_study(0), tmp_path, metric="accuracy", task="classification")
    assert report.importances == {} and _plots(report) == set()
    assert "optimization_history" in report.skipped and "param_importances" in report.skipped


def test_one_complete_trial_has_history_but_no_importances(tmp_path):
    report = build_report(_study(1, lambda t: _curves(t, t.suggest_float("lr", 1e-4, 1e-1, log=True))),
                          tmp_path, metric="accuracy", task="classification")
    assert {"optimization_history", "parallel_coordinate", "slice_lr", "intermediate_values"} <= _plots(report)
    assert report.importances == {} and "2 complete trials" in report.skipped["param_importances"]
    for f in report.files:
        assert (tmp_path / f).stat().st_size > 0


def test_single_parameter_gets_all_the_importance(tmp_path):
    report = build_report(_study(8, lambda t: _curves(t, t.suggest_float("x", 0, 1))), tmp_path,
                          metric="rmse", task="regression")
    assert report.importances == {"x": pytest.approx(1.0)}
    assert "param_importances" in _plots(report)


def test_constant_values_and_failures_are_skipped_with_a_reason(tmp_path):
    def objective(t):
        t.suggest_float("x", 0, 1)
        if t.number % 3 == 2:
            raise RuntimeError("diverged")
        return 0.5

    report = build_report(_study(6, objective), tmp_path, metric="accuracy", task="classification")
    assert report.importances == {} and "same value" in report.skipped["param_importances"]
    assert "optimization_history" in _plots(report)


def test_only_failed_and_pruned_trials(tmp_path):
    def objective(t):
        t.suggest_float("x", 0, 1)
        if t.number % 2:
            raise RuntimeError("diverged")
        return _curves(t, 0.5, prune_after=2)

    report = build_report(_study(4, objective), tmp_path, metric="accuracy", task="classification")
    assert _plots(report) == {"intermediate_values"}  # the pruned curves are still worth a look
    assert report.importances == {}


@pytest.mark.slow
def test_a_thousand_trials_stay_fast_and_close_their_figures(tmp_path):
    import matplotlib.pyplot as plt

    def objective(t):
        lr = t.suggest_float("lr", 1e-4, 1e-1, log=True)
        opt = t.suggest_categorical("optimizer", ["sgd", "adam"])
        if opt == "sgd":
            t.suggest_float("momentum", 0.8, 0.99)
        width = t.suggest_int("width", 8, 128)
        value = 1 - 1 / (1 + 100 * lr) + width / 1e4
        return _curves(t, value, epochs=10, prune_after=4 if t.number % 5 == 1 else None)

    study = _study(1000, objective)
    build_report(_study(3, objective), tmp_path / "warm", metric="accuracy", task="classification")  # imports
    started = time.perf_counter()
    report = build_report(study, tmp_path / "big", metric="accuracy", task="classification")
    seconds = time.perf_counter() - started
    print(f"report of 1000 trials: {seconds:.1f}s")
    assert {"optimization_history", "param_importances", "parallel_coordinate", "intermediate_values",
            "slice_lr", "slice_momentum", "slice_optimizer", "slice_width"} <= _plots(report)
    assert max(report.importances, key=report.importances.get) == "lr"
    assert math.isclose(sum(report.importances.values()), 1.0, abs_tol=1e-6)
    assert seconds < 20  # about 4-5 s on two CPU cores
    assert plt.get_fignums() == []


def test_regression_model_gets_a_predicted_vs_true_plot(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], dtype=np.float32)).astype(np.float32)
    ds = Dataset(name="synthetic", task="regression", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:],
                 n_classes=0, is_image=False)

    class Linear(torch.nn.Module):
        def forward(self, inp):
            return inp @ torch.tensor([1.0, -2.0, 0.5])

    study = _study(3, lambda t: _curves(t, t.suggest_float("lr", 1e-4, 1e-1, log=True)), direction="minimize")
    report = build_report(study, tmp_path, model=Linear(), dataset=ds, metric="rmse", task="regression")
    assert "predicted_vs_true" in _plots(report) and "confusion_matrix" not in report.skipped
    assert "test rmse 0.0000" in (tmp_path / "predicted_vs_true.html").read_text()


def test_classification_without_model_skips_only_the_confusion_matrix(tmp_path):
    study = _study(3, lambda t: _curves(t, t.suggest_float("lr", 1e-4, 1e-1, log=True)))
    report = build_report(study, tmp_path, metric="accuracy", task="classification")
    assert report.skipped == {"confusion_matrix": "no refit model"}
