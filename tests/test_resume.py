"""Interrupted drivers: SIGINT stops cleanly, kill -9 leaves nothing that --resume cannot mend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo.tracking import optuna_storage_for, store_lock
from tests._layout import assert_layout
from tests.conftest import run_cli

SPEC = """
name: resumable
data: {dataset: digits}
model: mlp
search: {sampler: tpe, n_trials: 5, seed: 0}
cv: {folds: 2}
tracking: {report: false}
params:
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  width: [16, 32]
  epochs: 15
"""


def _start(tmp_path, store):
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "hpo", "run", "spec.yaml", "--tracking-uri", store],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(store, predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with store_lock(store):  # the driver may be creating the storage right now: take its lock
                trials = optuna.load_study(study_name="resumable", storage=optuna_storage_for(store)).get_trials()
            if predicate(trials):
                return trials
        except Exception:  # not created yet
            pass
        time.sleep(0.3)
    raise AssertionError("the study did not get there in time")


def _running_mid_epoch(trials):
    done = sum(t.state.is_finished() for t in trials)
    return done >= 1 and any(t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values for t in trials)


def _spec(tmp_path, store):
    return hpo.load_spec(tmp_path / "spec.yaml").replace(tracking_uri=store)


def _check_consistent(tmp_path, store, n):
    """``--resume`` finishes the study: its whole layout (one parent run, one closed child per trial, none
    RUNNING), n complete trials of n different draws, one refit."""
    proc = run_cli("run", "spec.yaml", "--tracking-uri", store, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(store, registry_uri=store)
    layout = assert_layout(client, None, _spec(tmp_path, store), resumed=True)
    finished = [t for t in layout.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == n
    assert len({(t.params["lr"], t.params["width"]) for t in finished}) == n  # no replayed draws
    assert len(client.search_model_versions("name='resumable'")) == 1
    return layout


@pytest.mark.slow
def test_kill_9_of_the_driver_then_resume(tmp_path, store):
    (tmp_path / "spec.yaml").write_text(SPEC)
    proc = _start(tmp_path, store)
    _wait_for(store, _running_mid_epoch)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    layout = _check_consistent(tmp_path, store, 5)
    stale = [t for t in layout.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(stale) == 1 and layout.study.user_attrs["hpo.requeued"] == [stale[0].number]
    assert stale[0].user_attrs["hpo.interrupted"]
    assert [n for n in layout.children if layout.state(n) == "killed"] == [stale[0].number]  # its run KILLED


@pytest.mark.slow
def test_sigint_stops_cleanly_then_resume(tmp_path, store):
    (tmp_path / "spec.yaml").write_text(SPEC)
    proc = _start(tmp_path, store)
    _wait_for(store, _running_mid_epoch)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in out and "Traceback" not in err
    # the cut trial is KILLED, the parent too, and nothing is left RUNNING
    assert_layout(MlflowClient(store), None, _spec(tmp_path, store), status="KILLED")
    _check_consistent(tmp_path, store, 5)
