"""A user's model factory on a real local Ray: the workers import the user's module from the spec's
folder (issue #13: Ray workers get everything a built-in gets)."""

from __future__ import annotations

import textwrap

import optuna
import pytest
from mlflow import MlflowClient

from hpo.tracking import optuna_storage_for
from tests.conftest import run_cli

NETS = '''
from __future__ import annotations

from torch import nn


class Tiny(nn.Module):
    def __init__(self, n_in: int, n_out: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))

    def forward(self, x):
        return self.body(x.flatten(1))


def build(input_shape, n_outputs, hidden: int = 8):
    import logging

    print(f"building a Tiny with hidden={hidden}")
    logging.getLogger("raynets").warning("hidden=%d is small", hidden)
    return Tiny(input_shape[0], n_outputs, hidden)
'''

SPEC = """
name: ray-factory
data: {dataset: iris}
model:
  factory: raynets:build
  params:
    hidden: [4, 8]
search: {sampler: random, n_trials: 2, seed: 0}
cv: {folds: 2}
execution: {executor: ray, max_concurrent_trials: 2}
tracking: {report: false}
params:
  epochs: 2
"""


@pytest.mark.slow
def test_a_factory_model_study_runs_on_a_local_ray(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "raynets.py").write_text(textwrap.dedent(NETS))
    (project / "spec.yaml").write_text(SPEC)
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    elsewhere = tmp_path / "elsewhere"  # the module is found through the spec's folder, not the cwd
    elsewhere.mkdir()
    proc = run_cli("run", str(project / "spec.yaml"), "--tracking-uri", store, cwd=elsewhere, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = optuna.load_study(study_name="ray-factory", storage=optuna_storage_for(store)).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("ray-factory").experiment_id])
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert len(children) == 2 and all("model.hidden" in r.data.params for r in children)
    assert not [r for r in children if r.data.tags["hpo.worker"].startswith("local")]  # ran on Ray workers
    for r in children:  # what the factory printed and logged on the worker is in the trial's log
        hidden = r.data.params["model.hidden"]
        log = (tmp_path / r.info.run_id)
        text = open(client.download_artifacts(r.info.run_id, "logs/trial.log", str(log))).read()
        assert f"building a Tiny with hidden={hidden}\n" in text and f"WARNING raynets: hidden={hidden} is small" in text
        assert f"hidden={12 - int(hidden)}" not in text, text  # not the other trial's
    assert len(client.search_model_versions("name='ray-factory'")) == 1
