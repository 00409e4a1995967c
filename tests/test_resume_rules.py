"""``--resume`` continues the same study, once: spec changes refused, finished studies left alone,
new points drawn, the ``best`` tag rebuilt, a failing refit recorded (issue #12, defects 2-5 and 7)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo.errors import RefitError
from hpo.tracking import optuna_storage_for
from hpo.training import batch_bounds
from tests.conftest import run_cli

SPEC = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: {sampler}, n_trials: {n_trials}, seed: 0, metric: {metric}}}
cv: {{folds: 2}}
tracking: {{report: {report}}}
params:
  lr: {lr}
  width: [8, 16]
  epochs: 2
"""
LR = "{low: 1.0e-3, high: 1.0e-1, log: true}"


def _spec(tmp_path: Path, name="resumed", sampler="random", n_trials=2, metric="accuracy", report="false", lr=LR):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(name=name, sampler=sampler, n_trials=n_trials, metric=metric, report=report, lr=lr))
    return path


def _trials(name: str, store: str):
    return optuna.load_study(study_name=name, storage=optuna_storage_for(store)).get_trials()


def _runs(store: str, name: str):
    client = MlflowClient(store, registry_uri=store)
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id])


# --------------------------------------------------------------------------- 3: the spec must still match


@pytest.mark.parametrize(("change", "key", "old", "new"), [
    ({"metric": "log_loss"}, "search.metric", "'accuracy'", "'log_loss'"),
    ({"lr": "{low: 1.0e-2, high: 1.0e-1, log: true}"}, "params.lr", "[0.001, 0.1]", "[0.01, 0.1]"),
])
def test_resume_refuses_a_spec_that_changed_what_trials_mean(tmp_path, store, change, key, old, new):
    hpo.run(_spec(tmp_path), tracking_uri=store)
    before = _trials("resumed", store)
    _spec(tmp_path, **change)
    proc = run_cli("run", "spec.yaml", "--tracking-uri", store, "--resume", "--n-trials", "4", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if f": {key}: " in ln)
    assert line.startswith("spec.yaml: ") and old in line and new in line
    after = _trials("resumed", store)
    assert [(t.number, t.state, t.value) for t in after] == [(t.number, t.state, t.value) for t in before]
    _, runs = _runs(store, "resumed")
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_resume_accepts_a_higher_budget_and_another_sampler(tmp_path, store):
    hpo.run(_spec(tmp_path), tracking_uri=store)
    result = hpo.run(_spec(tmp_path, sampler="tpe", n_trials=3), tracking_uri=store, resume=True)
    assert sum(result.counts.values()) == 3


# --------------------------------------------------------------------------- 4: a finished study is left alone


def test_resume_of_a_finished_study_does_nothing_and_more_trials_refit_once(tmp_path, store):
    first = hpo.run(_spec(tmp_path, report="true"), tracking_uri=store)
    client, _ = _runs(store, "resumed")
    parent_before = client.get_run(first.parent_run_id)

    proc = run_cli("run", "spec.yaml", "--tracking-uri", store, "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already finished" in proc.stdout and "--n-trials N" in proc.stdout
    parent_after = client.get_run(first.parent_run_id)
    assert parent_after.info.status == "FINISHED" and parent_after.info.end_time == parent_before.info.end_time
    assert parent_after.data.metrics == parent_before.data.metrics
    assert len(client.search_model_versions("name='resumed'")) == 1
    assert len(_trials("resumed", store)) == 2

    more = hpo.run(_spec(tmp_path, report="true"), tracking_uri=store, resume=True, n_trials=3)
    assert not more.already_finished and sum(more.counts.values()) == 3
    assert len(client.search_model_versions("name='resumed'")) == 2
    again = hpo.run(_spec(tmp_path, report="true"), tracking_uri=store, resume=True, n_trials=3)
    assert again.already_finished and again.test_metrics == more.test_metrics
    assert len(client.search_model_versions("name='resumed'")) == 2


# --------------------------------------------------------------------------- 5: no replayed draws


@pytest.mark.parametrize("sampler", ["random", "tpe", "grid"])
def test_a_resumed_sampler_draws_points_the_study_has_not_tried(tmp_path, store, sampler):
    lr = "[0.001, 0.003, 0.01, 0.03, 0.1]" if sampler == "grid" else LR  # grid: 5 x 2 widths = 10 points
    hpo.run(_spec(tmp_path, sampler=sampler, n_trials=3, lr=lr), tracking_uri=store)
    hpo.run(_spec(tmp_path, sampler=sampler, n_trials=6, lr=lr), tracking_uri=store, resume=True)
    trials = _trials("resumed", store)
    assert len(trials) == 6
    points = [(t.params["lr"], t.params["width"]) for t in trials]
    assert len(set(points)) == 6, points


def test_a_fresh_study_keeps_its_seeded_draws(tmp_path, store):
    """The re-seeding only applies to a process joining a study that has trials already."""
    a = hpo.run(_spec(tmp_path, name="a", n_trials=3), tracking_uri=store)
    b = hpo.run(_spec(tmp_path, name="b", n_trials=3), tracking_uri=store)
    assert [t.params for t in _trials(a.name, store)] == [t.params for t in _trials(b.name, store)]


# --------------------------------------------------------------------------- 7: the best tag


def test_resume_rebuilds_the_best_tag_left_on_the_wrong_run(tmp_path, store):
    """As after a crash between telling Optuna and moving the tag: the tag sits on a worse run."""
    result = hpo.run(_spec(tmp_path, n_trials=3), tracking_uri=store)
    client, runs = _runs(store, "resumed")
    children = {int(r.data.tags["hpo.trial"]): r.info.run_id for r in runs if r.data.tags.get("hpo.role") == "trial"}
    best_run = children[result.best_number]
    worse = next(rid for n, rid in children.items() if n != result.best_number)
    client.delete_tag(best_run, "best")
    client.set_tag(worse, "best", "true")

    more = hpo.run(_spec(tmp_path, n_trials=5), tracking_uri=store, resume=True)
    _, runs = _runs(store, "resumed")
    tagged = [r for r in runs if r.data.tags.get("best") == "true"]
    assert len(tagged) == 1
    assert int(tagged[0].data.tags["hpo.trial"]) == more.best_number


def test_moving_the_best_tag_off_a_run_that_lost_it_is_fine(tmp_path, store):
    from hpo.tracking import Tracker

    tracker = Tracker(store, "tags", "tags")
    a, b = (tracker.client.create_run(tracker.experiment_id).info.run_id for _ in range(2))
    tracker.move_best(a, b)  # a never had the tag
    assert tracker.client.get_run(b).data.tags["best"] == "true"


# --------------------------------------------------------------------------- 2: the refit


def test_batch_norm_never_trains_on_a_batch_of_one():
    assert batch_bounds(120, 119, batch_norm=True) == [(0, 120)]
    assert batch_bounds(120, 119, batch_norm=False) == [(0, 119), (119, 120)]
    assert batch_bounds(121, 60, batch_norm=True) == [(0, 60), (60, 121)]
    assert batch_bounds(100, 30, batch_norm=True) == [(0, 30), (30, 60), (60, 90), (90, 100)]


def test_a_refit_with_a_last_batch_of_one_under_batch_norm_finishes(tmp_path, store):
    """iris: 120 training rows, 2 folds of 60: the folds train, the refit's last batch would be one row."""
    spec = tmp_path / "bn.yaml"
    spec.write_text("name: bn\ndata: {dataset: iris}\nmodel: mlp\nsearch: {n_trials: 1}\ncv: {folds: 2}\n"
                    "tracking: {report: false}\nparams: {batch_norm: true, batch_size: 119, epochs: 2}\n")
    proc = run_cli("run", "bn.yaml", "--tracking-uri", store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "merged into the batch before it" in proc.stderr


class _BreakArtifacts:
    """A progress display that, when the search ends, puts a file where the parent run's checkpoint
    folder must go: the refit's upload then fails like on a full or broken disk."""

    def __init__(self, store: str) -> None:
        self.store = store

    def start(self, spec, total, done):
        self.name = spec.name

    def trial_done(self, result, best):
        pass

    def message(self, text):
        pass

    def stop(self):
        client, runs = _runs(self.store, self.name)
        parent = next(r for r in runs if r.data.tags.get("hpo.role") == "study")
        root = Path(parent.info.artifact_uri.removeprefix("file://"))
        root.mkdir(parents=True, exist_ok=True)
        (root / "checkpoint").write_text("not a folder")


def test_a_failing_refit_ends_the_study_failed_with_its_reason_and_resume_refits(tmp_path, store):
    spec = _spec(tmp_path)
    with pytest.raises(RefitError) as err:
        hpo.run(spec, tracking_uri=store, progress=_BreakArtifacts(store))
    assert err.value.exit_code == 1
    assert "2 trials" in str(err.value) and "--resume" in str(err.value)
    client, runs = _runs(store, "resumed")
    parent = next(r for r in runs if r.data.tags.get("hpo.role") == "study")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["hpo.reason"].startswith("refit failed: ")
    assert not [r for r in runs if r.info.status == "RUNNING"]

    Path(parent.info.artifact_uri.removeprefix("file://"), "checkpoint").unlink()
    result = hpo.run(spec, tracking_uri=store, resume=True)
    assert result.model_uri and not result.interrupted
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    versions = client.search_model_versions("name='resumed'")
    assert len(versions) == 1, [(v.version, v.run_id, v.status) for v in versions]
