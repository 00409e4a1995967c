"""The registered model's aliases against a real sqlite registry: tracking.alias on every new version,
tracking.promote moving @champion only to a version whose test metric beats the current champion's."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

import hpo
from tests._layout import assert_layout
from tests.conftest import run_cli

STUDY = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: grid, seed: 0}}
cv: {{folds: 2}}
params: {{lr: {lr}, epochs: {epochs}, width: 16}}
tracking:
  report: false
  registered_model: iris-classifier
  alias: challenger
  promote: {{alias: champion, if_better_than: champion, metric: test_accuracy}}
"""


def _version(client, alias):
    return str(client.get_model_version_by_alias("iris-classifier", alias).version)


def test_first_study_becomes_champion_a_worse_one_only_challenger_a_better_one_moves_it(write_spec, store):
    client = MlflowClient(store, registry_uri=store)
    runs = {}
    for name, lr, epochs in (("first", 0.02, 6), ("worse", 1e-5, 1), ("better", 0.05, 40)):
        path = write_spec(STUDY.format(name=name, lr=lr, epochs=epochs), name)
        runs[name] = result = hpo.run(path, tracking_uri=store)
        spec = hpo.load_spec(path).replace(tracking_uri=store)
        assert_layout(client, result, spec)
        version = result.registered_model.split(" ")[0].rsplit("/", 1)[1]
        assert _version(client, "challenger") == version, "every new version is the challenger"
        parent = client.get_run(result.parent_run_id).data.tags
        assert parent["hpo.registered_model"] == result.registered_model
        assert parent["hpo.promote"].startswith(("promoted:", "kept:"))
        runs[name] = (result, version, parent["hpo.promote"])
    acc = {name: r.test_metrics["accuracy"] for name, (r, _, _) in runs.items()}
    assert acc["worse"] < acc["first"] < acc["better"], f"the three studies' test accuracies: {acc}"

    (_, v1, d1), (_, v2, d2), (_, v3, d3) = runs["first"], runs["worse"], runs["better"]
    assert [v1, v2, v3] == ["1", "2", "3"]
    assert d1 == "promoted: @champion -> version 1 (no version held @champion)"
    assert d2.startswith("kept: @champion not moved to version 2 (test_accuracy ") and "of version 1" in d2
    assert d3.startswith("promoted: @champion -> version 3 (test_accuracy ") and "of version 1" in d3
    assert _version(client, "champion") == "3"
    assert runs["better"][0].registered_model == "models:/iris-classifier/3 (@challenger, @champion)"
    assert runs["worse"][0].registered_model == "models:/iris-classifier/2 (@challenger)"

    # the decision is on the model versions too, with both values
    kept = client.get_model_version("iris-classifier", "2").tags
    assert kept["hpo.promote.decision"] == "kept" and kept["hpo.promote.previous_version"] == "1"
    assert float(kept["hpo.promote.value"]) == pytest.approx(acc["worse"])
    assert float(kept["hpo.promote.previous_value"]) == pytest.approx(acc["first"])
    moved = client.get_model_version("iris-classifier", "3").tags
    assert moved["hpo.promote.decision"] == "promoted" and float(moved["hpo.promote.value"]) == pytest.approx(acc["better"])
    first = client.get_model_version("iris-classifier", "1").tags
    assert first["hpo.promote.decision"] == "promoted" and "hpo.promote.previous_version" not in first

    # models:/NAME@champion loads the better study's model
    import mlflow
    import numpy as np
    import torch

    from hpo.data import load_spec_dataset

    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        champion = mlflow.pytorch.load_model("models:/iris-classifier@champion")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    ds = load_spec_dataset(hpo.load_spec(write_spec(STUDY.format(name="x", lr=0.1, epochs=1), "x")))
    with torch.no_grad():
        pred = champion(torch.as_tensor(ds.x_test, dtype=torch.float32)).argmax(1).numpy()
    assert float(np.mean(pred == ds.y_test)) == pytest.approx(acc["better"])


def test_summary_prints_the_registered_version_and_alias(write_spec, tmp_path):
    path = write_spec(STUDY.format(name="cli", lr=0.05, epochs=2, ), "cli")
    proc = run_cli("run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m/mlflow.db", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "models:/iris-classifier/1 (@challenger, @champion)" in proc.stdout


def test_system_metrics_are_mlflows_own_on_the_parent_run(write_spec, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    path = write_spec(STUDY.format(name="sys", lr=0.05, epochs=60).replace("report: false", "report: false\n"
                                                                            "  system_metrics: true"), "sys")
    result = hpo.run(path, tracking_uri=store)
    client = MlflowClient(store, registry_uri=store)
    metrics = client.get_run(result.parent_run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics
    history = client.get_metric_history(result.parent_run_id, "system/system_memory_usage_megabytes")
    assert history and all(m.value > 0 for m in history)
    assert_layout(client, result, hpo.load_spec(path).replace(tracking_uri=store))
