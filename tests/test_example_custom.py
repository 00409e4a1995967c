"""The shipped example of a user's own model and data (search_spaces/custom/) keeps working, run from
a copy in a temp folder (so it is found through the spec's folder, not the repository)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "search_spaces" / "custom"


@pytest.mark.slow
def test_the_custom_example_validates_and_runs(tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "custom", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    checked = run_cli("validate", "../custom/custom.yaml", cwd=work)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "trainable parameters" in checked.stdout
    ran = run_cli("run", "../custom/custom.yaml", "--n-trials", "2", cwd=work)
    assert ran.returncode == 0, ran.stderr[-3000:]
    store = f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("custom-moons").experiment_id])
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert len(children) == 2 and all("model.hidden" in r.data.params for r in children)
    assert len(client.search_model_versions("name='custom-moons'")) == 1
    # the read-side commands on a factory study, from the folder the user's modules live in
    for cmd in (["show", "custom-moons"], ["compare", "custom-moons"], ["report", "custom-moons"]):
        done = run_cli(*cmd, "--tracking-uri", store, cwd=tmp_path / "custom")
        assert done.returncode == 0 and "Traceback" not in done.stderr, (cmd, done.stderr[-3000:])
        assert "warning" not in done.stderr, (cmd, done.stderr[-3000:])
    parent = next(r for r in runs if r.data.tags.get("hpo.role") == "study")
    assert len(parent.data.tags["hpo.code_hash"]) == 12 and len(parent.data.tags["hpo.data_code_hash"]) == 12
    drawn = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/confusion_matrix.png" in drawn  # the refit model was rebuilt from the user's factory
