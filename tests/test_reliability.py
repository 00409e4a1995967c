"""Failures that must not lose work: failing trials, the fail-fast limit, concurrent studies, secrets."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo.tracking import optuna_storage_for, redact

IRIS = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: {sampler}, n_trials: {n}, seed: 0{extra}}}
cv: {{folds: 2}}
tracking: {{report: false}}
params:
{params}
"""


def test_max_failures_stops_proposing_trials(write_spec, store):
    spec = write_spec(IRIS.format(name="failfast", sampler="grid", n=4, extra=", max_failures: 2", params=(
        "  lr: [1.0e+5, 1.0e+6, 1.0e+7, 0.01]\n  optimizer: sgd\n  momentum: 0.99\n  epochs: 3")))
    result = hpo.run(spec, tracking_uri=store)
    trials = optuna.load_study(study_name="failfast", storage=optuna_storage_for(store)).get_trials()
    assert result.counts["failed"] == 2
    assert len(trials) < 4  # the fourth grid point was never started
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL:
            assert "loss became" in t.user_attrs["reason"]


def test_secrets_in_the_spec_are_not_stored(write_spec, store):
    text = IRIS.format(name="secret", sampler="random", n=1, extra="", params="  epochs: 1")
    text = "# results mirrored to postgresql+psycopg2://hpo:hunter2@db:5432/runs\n" + text
    result = hpo.run(write_spec(text), tracking_uri=store)
    client = MlflowClient(store)
    spec_file = [a.path for a in client.list_artifacts(result.parent_run_id, "spec")][0]
    stored = client.download_artifacts(result.parent_run_id, spec_file)
    content = open(stored).read()
    assert "hunter2" not in content and "hpo:***@db" in content
    run = client.get_run(result.parent_run_id)
    assert not any("hunter2" in v for v in [*run.data.params.values(), *run.data.tags.values()])


def test_redact_keeps_the_rest_of_the_url():
    assert redact("uri: https://u:p%40ss@h:5000/x and s3://a:b@c") == "uri: https://u:***@h:5000/x and s3://a:***@c"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.parametrize("text, shown", [
    ("http://user:pw@host:5000/api", "http://user:***@host:5000/api"),
    ("postgresql://:pw@db:5432/runs", "postgresql://:***@db:5432/runs"),  # empty user
    ("http://u:p@ss@host/x?y=1", "http://u:***@host/x?y=1"),  # '@' in the password: the host is after the last '@'
    ("http://u:p:a@s@s@host", "http://u:***@host"),
    ("https://u:p%40ss%2Fw@host:443/", "https://u:***@host:443/"),  # percent-encoded
    ("ray://admin:hunter2@head:10001", "ray://admin:***@head:10001"),
    ("postgresql+psycopg2://hpo:pw@db/runs", "postgresql+psycopg2://hpo:***@db/runs"),
    ("http://host/x?password=pw&run=1", "http://host/x?password=***&run=1"),
    ("http://host/x?a=1&pwd=pw#top", "http://host/x?a=1&pwd=***#top"),
    ("http://host/?token=t;api_key=k&apikey=k2", "http://host/?token=***;api_key=***&apikey=***"),
    ("s3://b/k?X-Amz-Signature=abc&X-Amz-Security-Token=def&v=2", "s3://b/k?X-Amz-Signature=***&X-Amz-Security-Token=***&v=2"),
    ("http://host/?db_password=pw&secret=s&client_secret=c", "http://host/?db_password=***&secret=***&client_secret=***"),
    ("host=db password=pw user=hpo", "host=db password=*** user=hpo"),  # libpq keyword DSN
    ("error: 'http://u:pw@h:1' refused", "error: 'http://u:***@h:1' refused"),
])
def test_redact_hides_every_password_form(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("text", [
    "ssh://git@github.com/x.git",  # a user name alone is no secret
    "http://host:5000/api?max_tokens=3&keyboard=1",  # keys that only contain a secret word
    "file:///tmp/a@b/c", "sqlite:////tmp/x@y.db", "mail me at a@b.c", "",
])
def test_redact_leaves_text_without_secrets_alone(text):
    assert redact(text) == text


def test_redact_data_hides_secrets_in_nested_spec_data():
    from hpo.redact import redact_data

    spec = {"tracking": {"uri": "http://u:pw@h", "experiment": "e"}, "password": "hunter2", "n": 3,
            "data": {"options": [{"api_key": "k", "keep": "http://h/?token=t"}, ("a", "s3://x:y@b")]}, "none": None}
    assert redact_data(spec) == {"tracking": {"uri": "http://u:***@h", "experiment": "e"}, "password": "***", "n": 3,
                                 "data": {"options": [{"api_key": "***", "keep": "http://h/?token=***"},
                                                      ("a", "s3://x:***@b")]}, "none": None}
    assert spec["password"] == "hunter2"  # a copy: the caller's data is untouched


@pytest.mark.slow
def test_two_studies_on_one_store_at_once(tmp_path, store):
    procs = []
    for name in ("left", "right"):
        (tmp_path / f"{name}.yaml").write_text(IRIS.format(
            name=name, sampler="random", n=6, extra="", params="  lr: {low: 1.0e-3, high: 1.0e-1, log: true}\n"
            "  epochs: 3"))
        procs.append(subprocess.Popen([sys.executable, "-m", "hpo", "run", f"{name}.yaml", "--tracking-uri", store,
                                       "--quiet"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env={**os.environ, "NO_COLOR": "1"}))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        assert "database is locked" not in err
    client = MlflowClient(store)
    for name in ("left", "right"):
        trials = optuna.load_study(study_name=name, storage=optuna_storage_for(store)).get_trials()
        assert len(trials) == 6 and len({t.number for t in trials}) == 6
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id])
        assert sum(r.data.tags.get("hpo.role") == "trial" for r in runs) == 6
        assert sum(r.data.tags.get("hpo.role") == "study" for r in runs) == 1


@pytest.mark.slow
def test_same_study_started_twice_at_once_runs_once(tmp_path, store):
    (tmp_path / "s.yaml").write_text(IRIS.format(name="twice", sampler="random", n=3, extra="",
                                                 params="  epochs: 2"))
    procs = [subprocess.Popen([sys.executable, "-m", "hpo", "run", "s.yaml", "--tracking-uri", store, "--quiet"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "NO_COLOR": "1"}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-1500:] for o in outs]
    refused = [o[1] for p, o in zip(procs, outs, strict=True) if p.returncode == 2][0]
    assert "--resume" in refused and "Traceback" not in refused
    trials = optuna.load_study(study_name="twice", storage=optuna_storage_for(store)).get_trials()
    assert len(trials) == 3
    exp = MlflowClient(store).get_experiment_by_name("twice")
    runs = MlflowClient(store).search_runs([exp.experiment_id])
    assert sum(r.data.tags.get("hpo.role") == "study" for r in runs) == 1


def test_tracking_server_down_at_start_is_an_error_before_training(tmp_path):
    from tests._processes import free_port
    from tests.conftest import run_cli

    (tmp_path / "s.yaml").write_text(IRIS.format(name="down", sampler="random", n=1, extra="", params="  epochs: 1"))
    proc = run_cli("run", "s.yaml", "--tracking-uri", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "is not reachable" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlruns").exists()
