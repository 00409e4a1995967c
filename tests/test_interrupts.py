"""Ctrl-C in every phase of a study (set-up, trials, refit, model logging, report), once or twice:
exit 130, the resume command, no RUNNING run; then ``--resume`` finishes the study exactly once
(issue #12, defect 6). Real processes and real signals; the phase is found by watching the stores."""

from __future__ import annotations

import glob
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from hpo.interrupts import Interrupted, Interrupts
from hpo.tracking import optuna_storage_for
from tests.conftest import run_cli

N_TRIALS = 2
SPEC = f"""
name: cut
data: {{dataset: digits}}
model: mlp
search: {{sampler: random, n_trials: {N_TRIALS}, seed: 0}}
cv: {{folds: 2}}
params:
  lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}
  width: 64
  epochs: 25
"""


def _query(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(sql).fetchall()
    except sqlite3.Error:  # not created yet, or mid-migration
        return []


class _Watch:
    """What the running study has written so far, read straight from its sqlite files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.optuna_db = folder / "mlruns" / "optuna.db"

    def states(self) -> list[str]:
        return [s for (s,) in _query(self.optuna_db, "select state from trials")]

    def attrs(self) -> set[str]:
        return {k for (k,) in _query(self.optuna_db, "select key from study_user_attributes")}

    def mid_trial(self) -> bool:
        return bool(_query(self.optuna_db, "select 1 from trial_intermediate_values v join trials t "
                                           "on v.trial_id = t.trial_id where t.state = 'RUNNING'"))

    def best_checkpoint(self) -> bool:
        return bool(glob.glob(str(self.folder / "mlruns/artifacts/**/checkpoint/best.pt"), recursive=True))


PHASES = {
    # the MLflow store exists: the study is opening its tracking, executor and data
    "setup": lambda w: (w.folder / "mlruns" / "mlflow.db").exists(),
    "trial": lambda w: w.mid_trial(),
    "refit": lambda w: w.states().count("COMPLETE") == N_TRIALS and "hpo.refit" not in w.attrs(),
    "log": lambda w: w.best_checkpoint() and "hpo.refit" not in w.attrs(),
    "report": lambda w: "hpo.refit" in w.attrs() and "hpo.reported" not in w.attrs(),
}


def _start(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "hpo", "run", "spec.yaml"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _interrupt_when(proc: subprocess.Popen, watch: _Watch, phase: str, signals: int, timeout: float = 240) -> bool:
    """Send ``signals`` SIGINTs once ``phase`` is seen; False if the study ended before it was."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if PHASES[phase](watch):
            for _ in range(signals):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.03)
            return True
        time.sleep(0.02)
    return False


def _store(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


def _runs(folder: Path):
    store = _store(folder)
    client = MlflowClient(store, registry_uri=store)
    exp = client.get_experiment_by_name("cut")
    return client, ([] if exp is None else client.search_runs([exp.experiment_id]))


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "signals"), [
    ("setup", 1), ("trial", 2), ("refit", 1), ("log", 1), ("report", 1),
])
def test_ctrl_c_in_any_phase_stops_cleanly_and_resume_finishes_once(tmp_path, phase, signals):
    (tmp_path / "spec.yaml").write_text(SPEC)
    proc = _start(tmp_path)
    caught = _interrupt_when(proc, _Watch(tmp_path), phase, signals)
    out, err = proc.communicate(timeout=240)
    assert caught, f"the study finished before the {phase} phase was seen:\n{err[-2000:]}"
    assert proc.returncode == 130, f"{out[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "hpo run spec.yaml --resume" in out.replace("\n", " ")
    _, runs = _runs(tmp_path)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    assert [p.info.status for p in parents] in ([], ["KILLED"])
    if (tmp_path / "mlruns" / "optuna.db").exists():
        trials = optuna.load_study(study_name="cut", storage=optuna_storage_for(_store(tmp_path))).get_trials()
        assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING]

    proc = run_cli("run", "spec.yaml", "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(study_name="cut", storage=optuna_storage_for(_store(tmp_path))).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    assert len({t.params["lr"] for t in complete}) == N_TRIALS  # re-queued points run once, no replayed draws
    client, runs = _runs(tmp_path)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(client.search_model_versions("name='cut'")) == 1
    report = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/importances.json" in report or any(p.endswith(".html") for p in report)
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "checkpoint")} == {"checkpoint/best.pt"}


# --------------------------------------------------------------------------- the phase rules, in-process


def test_first_signal_in_a_deferred_phase_waits_for_its_end():
    stops = []
    guard = Interrupts(on_stop=lambda: stops.append(1))
    guard.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # setup: noted, not raised
        assert guard.requested
        with pytest.raises(Interrupted):
            guard.enter("search")
    finally:
        guard.restore()
    assert stops == []


def test_search_phase_first_signal_stops_trials_second_raises_after_a_held_block():
    stops = []
    guard = Interrupts(on_stop=lambda: stops.append(1))
    guard.enter("search")
    guard.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stops == [1]
        with pytest.raises(KeyboardInterrupt):
            with guard.held():
                os.kill(os.getpid(), signal.SIGINT)
                done = True  # the block runs to its end before the interrupt
        assert done
    finally:
        guard.restore()


def test_signals_while_closing_are_counted_not_raised():
    guard = Interrupts()
    guard.enter("refit")
    guard.install()
    try:
        with guard.closing():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        assert guard.signals == 2
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        guard.restore()


def test_an_ignored_sigint_stays_ignored():
    """A background job's shell ignores SIGINT for it; the study must not take that over."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        guard = Interrupts()
        guard.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        guard.restore()
    finally:
        signal.signal(signal.SIGINT, previous)
