"""The shipped example of a user's own training step (search_spaces/objective/) keeps working, run from a
copy in a temp folder (so its module is found through the spec's folder, not the repository)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "search_spaces" / "objective"


@pytest.mark.slow
def test_the_objective_example_validates_runs_and_reports(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "objective", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    checked = run_cli("validate", "../objective/objective.yaml", cwd=work)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "objective digits_train:fit_fold" in checked.stdout
    ran = run_cli("run", "../objective/objective.yaml", "--n-trials", "2", cwd=work)
    assert ran.returncode == 0, ran.stderr[-3000:]
    store = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("digits-two-view").experiment_id])
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert len(children) == 2 and all("accum_steps" in r.data.params for r in children)
    parent = next(r for r in runs if r.data.tags.get("hpo.role") == "study")
    assert parent.data.metrics["test_accuracy"] > 0.5  # evaluate() on the held-out split
    assert len(client.search_model_versions("name='digits-two-view'")) == 1
    for cmd in (["show", "digits-two-view"], ["compare", "digits-two-view"], ["report", "digits-two-view"]):
        done = run_cli(*cmd, "--tracking-uri", store, cwd=tmp_path / "objective")
        assert done.returncode == 0 and "Traceback" not in done.stderr, (cmd, done.stderr[-3000:])
        assert "warning" not in done.stderr, (cmd, done.stderr[-3000:])
    drawn = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/confusion_matrix.png" in drawn  # the two-input model, on its Dataset's test items
