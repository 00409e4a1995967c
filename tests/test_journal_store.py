"""Optuna's journal file as a study's storage (``tracking.storage: PATH.journal``): a real study, its resume and
the CLI's checks, read back with Optuna's own JournalStorage and MLflow's client. (On Ray: tests/test_ray.py's
pruning test runs on a journal.)"""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import hpo
from hpo.errors import SpecError

STUDY = """
name: journaled
data: {{dataset: iris}}
model: mlp
search: {{sampler: tpe, n_trials: 4, seed: 0, pruner: median}}
cv: {{folds: 2}}
params: {{lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}, epochs: 3, width: 8, patience: 0}}
execution: {{max_concurrent_trials: 2}}
tracking: {{report: false, storage: {storage}}}
"""


def _study(path):
    return optuna.load_study(study_name="journaled", storage=JournalStorage(JournalFileBackend(str(path))))


def test_a_study_and_its_resume_keep_their_trials_in_the_journal(write_spec, store, tmp_path):
    journal = tmp_path / "optuna" / "study.journal"  # its folder is made
    path = write_spec(STUDY.format(storage=journal))
    result = hpo.run(path, tracking_uri=store)
    assert result.counts["complete"] + result.counts["pruned"] == 4
    trials = _study(journal).get_trials()
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert all(t.intermediate_values for t in trials), "the epoch sink reported every trial's epochs"
    # each trial names its MLflow child run, which names it back
    client = MlflowClient(store)
    for t in trials:
        run = client.get_run(t.user_attrs["mlflow.run_id"])
        assert run.data.tags["hpo.role"] == "trial" and run.data.params["lr"] == str(t.params["lr"])
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done and all("fold_values" in t.user_attrs for t in done)
    assert not (tmp_path / "mlruns" / "optuna.db").exists(), "no sqlite store beside the tracking one"

    more = hpo.run(path, tracking_uri=store, resume=True, n_trials=6)
    assert sum(more.counts.values()) == 6
    again = _study(journal).get_trials()
    assert len(again) == 6 and [t.params for t in again[:4]] == [t.params for t in trials]
    assert more.parent_run_id == result.parent_run_id


@pytest.mark.parametrize("storage,rule", [
    ("mlruns/optuna.db", "or an Optuna journal file ending in .journal or .log"),
    ("{tmp}/afile/optuna.journal", "is a file, so the folder of the journal"),
    ("{tmp}/a.journal", "is a folder; name the journal file inside it"),
])
def test_a_journal_path_hpo_cannot_use_is_refused_with_the_rule(write_spec, tmp_path, storage, rule):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "a.journal").mkdir()
    path = write_spec(STUDY.format(storage=storage.format(tmp=tmp_path)))
    with pytest.raises(SpecError) as err:
        hpo.load_spec(path)
    assert "tracking.storage" in str(err.value) and rule in str(err.value)


def test_a_journal_in_a_folder_hpo_may_not_write_stops_the_run_before_anything_is_written(write_spec, tmp_path,
                                                                                         as_user):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        path = write_spec(STUDY.format(storage=locked / "optuna.journal"))
        out = as_user("run", str(path), cwd=tmp_path)
        assert out.returncode == 2 and "permission denied" in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert str(locked) in out.stderr and not (tmp_path / "mlruns").exists() and not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_a_journal_beside_the_tracking_store_is_where_show_compare_and_the_next_study_find_their_trials(
        write_spec, tmp_path, as_user, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)  # the relative journal path is taken against the folder hpo runs in
    (tmp_path / "mlruns").mkdir()
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    hpo.run(write_spec(STUDY.format(storage="mlruns/optuna.journal")), tracking_uri=store)
    # the next study names no storage: it goes beside, into the journal, not into a new optuna.db
    second = STUDY.format(storage="null").replace("name: journaled", "name: second")
    hpo.run(write_spec(second, "second"), tracking_uri=store)
    assert not (tmp_path / "mlruns" / "optuna.db").exists()
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "mlruns" / "optuna.journal")))
    assert sorted(optuna.get_all_study_names(storage)) == ["journaled", "second"]
    # a third study in an optuna.db beside it: readers look in both
    third = STUDY.format(storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}").replace("name: journaled",
                                                                                          "name: third")
    hpo.run(write_spec(third, "third"), tracking_uri=store)

    for p in [tmp_path / "mlruns", *(tmp_path / "mlruns").rglob("*")]:  # a user who may only read
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        before = sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "mlruns").rglob("*"))
        show = as_user("show", "journaled", "--tracking-uri", store, "--json", cwd=tmp_path)
        assert show.returncode == 0, show.stderr[-3000:]
        doc = json.loads(show.stdout)
        trials = _study(tmp_path / "mlruns" / "optuna.journal").trials
        assert [t["params"] for t in sorted(doc["trials"], key=lambda t: t["number"])] == [t.params for t in trials]
        compare = as_user("compare", "journaled", "third", "second", "--tracking-uri", store, "--json", cwd=tmp_path)
        assert compare.returncode == 0, compare.stderr[-3000:]
        assert [s["name"] for s in json.loads(compare.stdout)] == ["journaled", "third", "second"]
        missing = as_user("show", "jounraled", "--tracking-uri", store, cwd=tmp_path)
        assert missing.returncode == 2 and "did you mean 'journaled'?" in missing.stderr
        assert "studies there: third, journaled, second" in missing.stderr, missing.stderr
        assert sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "mlruns").rglob("*")) == before
    finally:
        for p in [tmp_path / "mlruns", *(tmp_path / "mlruns").rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


@pytest.mark.parametrize("text", ["this is not json\n", '{"op_code": 0, "worker_id": "w"}\n'])
def test_a_damaged_journal_is_refused_by_run_and_show_with_exit_2_and_nothing_written(write_spec, tmp_path, text):
    from tests.conftest import run_cli

    (tmp_path / "mlruns").mkdir()
    journal = tmp_path / "mlruns" / "optuna.journal"
    journal.write_text(text)
    path = write_spec(STUDY.format(storage="mlruns/optuna.journal"))
    for args in (("run", str(path)), ("show", "journaled")):
        out = run_cli(*args, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "optuna.journal is damaged (not an Optuna journal" in out.stderr and "restore it from a backup" in out.stderr
    assert sorted(p.name for p in (tmp_path / "mlruns").iterdir() if not p.name.startswith(".")) == ["optuna.journal"]
    assert journal.read_text() == text
