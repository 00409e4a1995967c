"""A tracking server that goes away for longer than ``tracking.outage_timeout`` while trials run on Ray.

On Ray the epochs go to the epoch-sink actor, whose own outbox meets the outage first (the driver
writes nothing while its trials train). The contract is the one of a local study
(tests/test_outage.py): the study stops with "tracking lost" (`hpo run` exits 75); every trial running when it stopped is
recorded as interrupted (Optuna FAIL with ``hpo.interrupted``, which ``--resume`` re-queues), never
PRUNED (final); once the server is back, ``hpo sync`` then ``hpo run --resume`` end with exactly
``n_trials`` finished trials and no MLflow run left RUNNING.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the relay and the module's MLflow server of the local outage tests (only these two, which stay put)
from tests.test_outage import Relay, server  # noqa: F401 - server is a fixture

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# long trials (2000 epochs of iris, their folds one after another: about 6 s on an idle 2-core machine), cheap
# to refit: the sink actor first writes a trial's curve half a second after it began (tracking.curve_flush_s),
# meets the outage (a refused write takes about a second) and gives up outage_timeout later (~3.5 s in); the
# trials must still be running then. The resume packs their folds (execution may change on --resume), which
# re-runs them faster
SPEC = """\
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: random, n_trials: {n}, seed: 0, pruner: none}}
cv: {{folds: 2}}
params:
  lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}
  width: 16
  depth: 1
  batch_size: 128
  epochs: {epochs}
tracking: {{uri: {uri}, report: false, outage_timeout: {grace}, curve_flush_s: 0.5}}
execution: {{executor: ray, max_concurrent_trials: 2, cpus_per_trial: 1, max_retries: 0, pack_folds: {pack}}}
"""


def _trial_rows(cwd: Path, name: str) -> list[tuple[int, str, int]]:
    """(number, state, epochs reported) of every trial of ``name`` in hpo's Optuna storage under ``cwd``."""
    db = cwd / "mlruns" / "optuna.db"
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            return con.execute(
                "SELECT t.number, t.state, (SELECT count(*) FROM trial_intermediate_values v "
                "WHERE v.trial_id = t.trial_id) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = ? ORDER BY t.number", (name,)).fetchall()
    except sqlite3.OperationalError:  # tables not there yet
        return []


def _runs(url: str, name: str):
    """(parent runs, child runs by trial number) of study ``name`` on the server at ``url``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
    children = {int(r.data.tags["hpo.trial"]): r for r in runs if r.data.tags.get("hpo.role") == "trial"}
    return [r for r in runs if r.data.tags.get("hpo.role") == "study"], children


def _study(cwd: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'mlruns' / 'optuna.db'}")


def _describe(server_url: str, cwd: Path, name: str) -> str:
    """Every trial's Optuna state and hpo user attrs, and every MLflow run's status: the failure message."""
    lines = []
    for t in _study(cwd, name).trials:
        attrs = {k: v for k, v in t.user_attrs.items() if k.startswith("hpo.") or k == "reason"}
        lines.append(f"trial {t.number}: {t.state.name} epochs={len(t.intermediate_values)} {attrs}")
    with contextlib.suppress(Exception):  # the server may be out of reach
        parents, children = _runs(server_url, name)
        for r in parents + list(children.values()):
            lines.append(f"run {r.data.tags.get('hpo.role')} {r.data.tags.get('hpo.trial', '')}: {r.info.status} "
                         f"hpo.state={r.data.tags.get('hpo.state')} epochs_trained="
                         f"{r.data.metrics.get('epochs_trained')}")
    return "\n".join(lines)


@pytest.fixture
def local_ray(tmp_path, monkeypatch):
    """A local Ray (2 CPUs) started in ``tmp_path``, shared by the run and its resume: hpo joins it.

    hpo keeps its Optuna storage in ``./mlruns`` for a server URI, and the sink actor opens the same
    relative path: Ray's workers start in the folder Ray was started in."""
    import ray

    assert not ray.is_initialized()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_a_long_outage_on_ray_interrupts_the_running_trials_and_resume_reruns_them(server, local_ray, tmp_path):  # noqa: F811
    import threading

    import optuna

    import hpo

    relay = Relay(int(server.rsplit(":", 1)[1]))
    name, n, epochs = "ray-outage", 2, 2000
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(name=name, n=n, epochs=epochs, uri=relay.url, grace=2, pack="false"))
    at_cut: list[tuple[int, str, int]] = []

    def cut_when_both_train() -> None:
        """Cut once both trials are training (each has reported an epoch), none finished."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = _trial_rows(tmp_path, name)
            if len(rows) == n and all(state == "RUNNING" and done >= 1 for _, state, done in rows):
                relay.cut()
                at_cut.extend(rows)
                return
            time.sleep(0.1)

    try:
        cutter = threading.Thread(target=cut_when_both_train, daemon=True)
        cutter.start()
        result = hpo.run(spec)
        cutter.join(timeout=5)
        state = _describe(server, tmp_path, name)
        assert at_cut, f"the trials were not seen training: {state}"
        assert result.tracking_lost and result.interrupted, (result, state)  # what `hpo run` exits 75 for

        # every trial running at the cut is interrupted (re-queued on --resume), none PRUNED: there is no pruner
        trials = _study(tmp_path, name).trials
        assert [t.number for t in trials] == [number for number, _, _ in at_cut], state
        for t in trials:
            assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("hpo.interrupted") is True, \
                f"trial {t.number} was running when the study stopped: want FAIL + hpo.interrupted\n{state}"
            assert len(t.intermediate_values) < epochs, state  # it was cut short

        relay.restore()
        sync = subprocess.run([sys.executable, "-m", "hpo", "sync", name], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
        assert sync.returncode == 0, sync.stdout + sync.stderr
        parents, children = _runs(server, name)
        assert [r.info.status for r in parents] == ["KILLED"], _describe(server, tmp_path, name)
        # the interrupted trials' runs are closed KILLED (by the study or, at the latest, by --resume): not RUNNING
        assert sorted(children) == list(range(n)) and "RUNNING" not in {r.info.status for r in children.values()}, \
            _describe(server, tmp_path, name)

        spec.write_text(SPEC.format(name=name, n=n, epochs=epochs, uri=relay.url, grace=2, pack="true"))
        resumed = hpo.run(spec, resume=True)
        assert not resumed.tracking_lost and not resumed.interrupted, (resumed, _describe(server, tmp_path, name))
        # no pruner: nothing may end PRUNED; the re-run trials complete and the best one is refit
        assert resumed.counts == {"complete": n, "pruned": 0, "failed": 0}, _describe(server, tmp_path, name)
        assert resumed.model_uri, _describe(server, tmp_path, name)
        # n finished trials, each interrupted one re-queued once; one closed child run per trial, the parent FINISHED
        state = _describe(server, tmp_path, name)
        study = _study(tmp_path, name)
        interrupted = {t.number for t in study.trials if t.user_attrs.get("hpo.interrupted")}
        finished = [t for t in study.trials if t.number not in interrupted]
        assert len(finished) == n and all(t.state == optuna.trial.TrialState.COMPLETE for t in finished), state
        assert interrupted == {number for number, _, _ in at_cut} == set(study.user_attrs.get("hpo.requeued", [])), \
            state
        parents, children = _runs(server, name)
        assert [r.info.status for r in parents] == ["FINISHED"], state
        assert sorted(children) == [t.number for t in study.trials], state
        for t in study.trials:
            run = children[t.number]
            if t.number in interrupted:
                assert (run.info.status, run.data.tags["hpo.state"]) == ("KILLED", "killed"), state
            else:
                assert (run.info.status, run.data.tags["hpo.state"]) == ("FINISHED", "complete"), state
                assert run.data.metrics["cv_accuracy_mean"] == pytest.approx(t.value), state
                assert run.data.metrics["epochs_trained"] == epochs, state
    finally:
        relay.cut()
