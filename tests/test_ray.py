"""Trials on a real Ray: a local Ray in this process, and a Ray head started as a subprocess."""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import hpo
from hpo.tracking import optuna_storage_for, store_lock
from tests._processes import ray_head, stop_group
from tests.conftest import run_cli

ray = pytest.importorskip("ray")

SPEC = """
name: {name}
data: {{dataset: digits}}
model: mlp
search: {{sampler: tpe, n_trials: {n_trials}, seed: 0, pruner: {pruner}}}
cv: {{folds: 2}}
tracking: {{report: false}}
params:
  lr: {{low: 1.0e-3, high: 3.0e-2, log: true}}
  width: [16, 32]
  epochs: {epochs}
execution: {{executor: ray, max_concurrent_trials: 2, cpus_per_trial: 1, max_retries: 1}}
"""

SUBMIT_NETS = """
from torch import nn


def build(input_shape, n_outputs, hidden: int = 8):
    n_in = 1
    for d in input_shape:
        n_in *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))
"""


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module: hpo joins it instead of starting its own."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def trials_of(name: str, store: str):
    with store_lock(store):  # the driver may be creating the storage right now: take its lock
        return optuna.load_study(study_name=name, storage=optuna_storage_for(store)).get_trials()


@pytest.mark.slow
def test_study_on_local_ray_records_like_a_local_run(local_ray, write_spec, store):
    spec = write_spec(SPEC.format(name="ray-small", n_trials=4, pruner="none", epochs=3))
    result = hpo.run(spec, tracking_uri=store)
    assert result.counts == {"complete": 4, "pruned": 0, "failed": 0}
    client = MlflowClient(store)
    runs = client.search_runs([result.experiment_id])
    parent = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert len(parent) == 1 and len(children) == 4
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")] == [1, 2, 3]
        assert "cpu" in c.data.tags["hpo.worker"] and c.data.tags["hpo.attempts"] == "1"
        # what the trial used, measured in its worker: another process than this one, one torch thread
        assert f"(pid {os.getpid()})" not in c.data.tags["hpo.worker"]
        m = c.data.metrics
        assert m["sys/peak_rss_mb"] > 50 and 0 < m["sys/cpu_seconds"] <= 2 * m["duration_s"] + 0.5, m
        epochs = client.get_metric_history(c.info.run_id, "sys/epoch_seconds")
        assert [e.step for e in epochs] == [1, 2, 3] and all(e.value > 0 for e in epochs)
    assert 0 < client.get_run(parent[0].info.run_id).data.metrics["study/training_share"] <= 1
    # two workers shared the trials: they ran in two different processes
    assert len({c.data.tags["hpo.worker"] for c in children}) == 2
    assert result.test_metrics["accuracy"] > 0.8
    # the pruner saw every epoch while the trials ran
    assert all(len(t.intermediate_values) == 3 for t in trials_of("ray-small", store))


@pytest.mark.slow
def test_pruning_on_ray_stops_trials_on_their_worker(local_ray, write_spec, store, tmp_path, monkeypatch):
    # Optuna's storage is a journal file here, named relative to the folder the study starts in (not the Ray
    # workers' folder): the sink actor reports and asks the pruner through the same file
    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "optuna.journal"
    text = SPEC.format(name="ray-prune", n_trials=8, pruner="median", epochs=6).replace(
        "lr: {low: 1.0e-3, high: 3.0e-2, log: true}", "lr: {low: 1.0e-6, high: 3.0e-2, log: true}\n  optimizer: sgd"
    ).replace("tracking: {report: false}", "tracking: {report: false, storage: optuna.journal}")
    result = hpo.run(write_spec(text), tracking_uri=store)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="ray-prune", storage=storage).get_trials()
    assert all(t.intermediate_values for t in trials)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and result.counts["pruned"] == len(pruned)
    client = MlflowClient(store)
    for t in pruned:
        run = client.get_run(t.user_attrs["mlflow.run_id"])
        assert run.data.metrics["epochs_trained"] < 6 and run.data.tags["hpo.state"] == "pruned"


@pytest.mark.slow
def test_worker_killed_mid_trial_is_retried(local_ray, write_spec, store, monkeypatch):
    """Every worker is killed while a trial is mid-way: each trial that was running re-runs once and completes.

    No timing luck: the workers' pids are read before any trial is submitted, and the kill goes to all of
    them once the storage shows a running trial with at most a third of its epochs reported. Its worker is
    then still inside that trial (its sink reports every epoch before the trial's ``end``), with 25+ epochs
    to go, so at least one trial is lost with its worker and retried."""
    from hpo.executors import ray as ray_executor

    epochs = 40
    spec = write_spec(SPEC.format(name="ray-kill", n_trials=3, pruner="none", epochs=epochs))
    pids: list[int] = []
    built = ray_executor.RayExecutor.__init__

    def init_and_read_pids(self, *args, **kwargs):
        built(self, *args, **kwargs)
        # an actor runs one call at a time: ask now, while every worker is idle (no trial is submitted yet)
        pids.extend(ray.get([w.pid.remote() for w in self.workers]))

    monkeypatch.setattr(ray_executor.RayExecutor, "__init__", init_and_read_pids)
    killed: list[int] = []
    seen: list[tuple[int, int]] = []  # (trial, epochs reported) that the kill came after

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                running = [t for t in trials_of("ray-kill", store) if t.state == optuna.trial.TrialState.RUNNING
                           and 2 <= len(t.intermediate_values) <= epochs // 3]
            except Exception:  # the study may not exist yet
                running = []
            if running and pids:
                for pid in pids:
                    psutil.Process(pid).kill()  # SIGKILL to a worker process this test's Ray started
                    killed.append(pid)
                seen.extend((t.number, len(t.intermediate_values)) for t in running)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = hpo.run(spec, tracking_uri=store)
    thread.join(timeout=5)
    assert len(pids) == 2 and sorted(killed) == sorted(pids), (pids, killed)
    assert result.counts == {"complete": 3, "pruned": 0, "failed": 0}
    client = MlflowClient(store)
    children = {int(r.data.tags["hpo.trial"]): r for r in client.search_runs([result.experiment_id])
                if r.data.tags.get("hpo.role") == "trial"}
    retried = {n for n, r in children.items() if r.data.tags["hpo.attempts"] == "2"}
    # the trial seen mid-way was retried; the other worker, if it was busy, made a second retry
    assert {n for n, _ in seen} <= retried and 1 <= len(retried) <= 2, (seen, retried)
    for n in retried:
        assert children[n].data.tags["hpo.state"] == "complete"
        assert children[n].data.metrics["epochs_trained"] == epochs
    assert all(r.data.tags["hpo.attempts"] == "1" for n, r in children.items() if n not in retried)


@pytest.mark.slow
def test_submit_to_a_ray_head_with_token_auth(tmp_path):
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    head, _gcs, url = ray_head(tmp_path, env)
    try:
        proj = tmp_path / "proj"
        proj.mkdir()
        # the user's own model travels with the job: its module sits beside the spec, nowhere installed
        (proj / "submitnets.py").write_text(SUBMIT_NETS)
        spec = SPEC.format(name="submitted", n_trials=2, pruner="none", epochs=2)
        spec = spec.replace("model: mlp", "model: {factory: submitnets:build, params: {hidden: [8, 16]}}")
        (proj / "spec.yaml").write_text(spec.replace("  width: [16, 32]\n", ""))
        store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        try:
            proc = run_cli("submit", "spec.yaml", "--address", url, "--tracking-uri", store, "--wait", cwd=proj,
                           timeout=300)
            listed = run_cli("jobs", "--address", url, cwd=proj)
        finally:
            os.environ.pop("RAY_AUTH_MODE")
            os.environ.pop("RAY_AUTH_TOKEN_PATH")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        assert "SUCCEEDED" in proc.stdout and "raysubmit_" in proc.stdout
        assert "submitted" in listed.stdout and "SUCCEEDED" in listed.stdout
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        exp = client.get_experiment_by_name("submitted")
        runs = client.search_runs([exp.experiment_id])
        children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
        assert len(children) == 2 and all("model.hidden" in r.data.params for r in children)
        assert client.search_model_versions("name='submitted'")
        # without the token the cluster refuses the client
        no_token = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        import subprocess

        refused = subprocess.run([sys.executable, "-m", "hpo", "jobs", "--address", url], cwd=proj, env=no_token,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
    finally:
        stop_group(head)


def test_submit_refuses_paths_outside_the_working_directory(tmp_path, monkeypatch):
    from hpo.errors import SpecError
    from hpo.jobs import package

    (tmp_path / "spec.yaml").write_text("name: x\ndata: {dataset: csv, path: ../secrets.csv, target: y, "
                                        "task: regression}\nmodel: mlp\nsearch: {n_trials: 1}\n")
    with pytest.raises(SpecError, match="data.path: must be a path inside the working directory"):
        package(tmp_path / "spec.yaml", tmp_path / "out", cwd=tmp_path)


def test_submit_needs_a_reachable_store(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC.format(name="s", n_trials=1, pruner="none", epochs=1))
    proc = run_cli("submit", "spec.yaml", "--address", "http://127.0.0.1:9", "--tracking-uri",
                   "sqlite:///relative.db", cwd=tmp_path)
    assert proc.returncode == 2 and "absolute sqlite path" in proc.stderr and "Traceback" not in proc.stderr


def test_submit_ships_the_factory_module_and_refuses_one_outside(tmp_path, monkeypatch):
    from hpo.errors import SpecError
    from hpo.jobs import package

    proj, outside = tmp_path / "proj", tmp_path / "outside"
    proj.mkdir()
    outside.mkdir()
    (outside / "farnets.py").write_text(SUBMIT_NETS)
    (proj / "nearnets.py").write_text(SUBMIT_NETS)
    spec = "name: x\ndata: {dataset: iris}\nmodel: {factory: %s:build}\nsearch: {n_trials: 1}\n"
    (proj / "near.yaml").write_text(spec % "nearnets")
    monkeypatch.chdir(proj)
    work = tmp_path / "job"
    work.mkdir()
    assert package("near.yaml", work, proj) == "near.yaml"
    assert (work / "nearnets.py").read_text() == SUBMIT_NETS
    (proj / "far.yaml").write_text(spec % "farnets")
    monkeypatch.syspath_prepend(str(outside))  # importable here, but not from the folder being submitted
    with pytest.raises(SpecError, match="model.factory: farnets:build comes from .*outside the working directory"):
        package("far.yaml", tmp_path / "job2", proj)
    sys.modules.pop("farnets", None)
    sys.modules.pop("nearnets", None)


@pytest.mark.slow
def test_a_multi_objective_study_on_ray_prunes_and_keeps_its_front(local_ray, write_spec, store):
    from hpo.selection import front
    from tests._layout import assert_layout

    text = SPEC.format(name="ray-mo", n_trials=6, pruner="successive_halving", epochs=4).replace(
        "pruner: successive_halving}", "pruner: successive_halving, objectives: [accuracy, n_params]}").replace(
        "width: [16, 32]", "width: [4, 16, 32]")
    path = write_spec(text)
    result = hpo.run(path, tracking_uri=store)
    study = optuna.load_study(study_name="ray-mo", storage=optuna_storage_for(store))
    members = front(study)
    assert members and result.best_number in {t.number for t in members}
    assert not {t.number for t in members} & {t.number for t in study.trials if t.state.name == "PRUNED"}
    # the epoch-sink actor kept the first objective's curve of every trial, the workers measured the costs
    assert all(t.user_attrs.get("hpo.curve") for t in study.trials)
    assert all(t.user_attrs["hpo.costs"]["n_params"] > 0 for t in study.trials if t.state.name == "COMPLETE")
    assert_layout(MlflowClient(store, registry_uri=store), result, hpo.load_spec(path).replace(tracking_uri=store))
