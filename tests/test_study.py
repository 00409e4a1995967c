"""Real Optuna studies on real data into a real sqlite MLflow store in a temp dir."""

from __future__ import annotations

import itertools

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo.errors import StudyExistsError
from hpo.tracking import optuna_storage_for
from tests._layout import assert_layout

IRIS = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: {sampler}, n_trials: {n_trials}, seed: {seed}, pruner: {pruner}}}
cv: {{folds: 2}}
params:
{params}
tracking: {{keep_checkpoints: 1}}
"""


def iris_spec(write_spec, name="iris", sampler="tpe", n_trials=4, seed=0, pruner="none", params=None):
    params = params or {"lr": "{low: 1.0e-3, high: 1.0e-1, log: true}", "width": "[8, 16]", "epochs": "3"}
    body = "\n".join(f"  {k}: {v}" for k, v in params.items())
    return write_spec(IRIS.format(name=name, sampler=sampler, n_trials=n_trials, seed=seed, pruner=pruner,
                                  params=body), name)


def loaded(path, store):
    """The spec at ``path`` as it runs on ``store``: what ``hpo.run`` takes and ``assert_layout`` checks."""
    return hpo.load_spec(path).replace(tracking_uri=store)


def trials(result, store):
    study = optuna.load_study(study_name=result.name, storage=optuna_storage_for(store))
    return study.get_trials()


def test_tpe_same_seed_same_params_and_values(write_spec, tmp_path):
    spec = iris_spec(write_spec, n_trials=5)
    a = hpo.run(spec, tracking_uri=f"sqlite:///{tmp_path}/a/mlflow.db")
    b = hpo.run(spec, tracking_uri=f"sqlite:///{tmp_path}/b/mlflow.db")
    ta, tb = trials(a, f"sqlite:///{tmp_path}/a/mlflow.db"), trials(b, f"sqlite:///{tmp_path}/b/mlflow.db")
    assert [t.params for t in ta] == [t.params for t in tb]
    assert [t.value for t in ta] == [t.value for t in tb]
    assert a.test_metrics == b.test_metrics
    c = hpo.run(spec, tracking_uri=f"sqlite:///{tmp_path}/c/mlflow.db", seed=1)
    assert [t.params for t in trials(c, f"sqlite:///{tmp_path}/c/mlflow.db")] != [t.params for t in ta]


def test_grid_runs_exactly_its_grid(write_spec, store):
    spec = iris_spec(write_spec, sampler="grid", n_trials=100,
                     params={"lr": "[0.01, 0.05]", "width": "{low: 4, high: 12, step: 4}", "epochs": "2"})
    result = hpo.run(spec, tracking_uri=store)
    got = sorted((t.params["lr"], t.params["width"]) for t in trials(result, store))
    assert got == sorted(itertools.product([0.01, 0.05], [4, 8, 12]))
    assert result.counts["complete"] == 6


def test_pruned_trials_are_recorded_with_fewer_epochs(write_spec, store):
    spec = loaded(iris_spec(write_spec, sampler="random", n_trials=10, pruner="median", seed=3,
                            params={"lr": "{low: 1.0e-6, high: 1.0e-1, log: true}", "optimizer": "sgd",
                                    "epochs": "8"}), store)
    result = hpo.run(spec)
    layout = assert_layout(MlflowClient(store, registry_uri=store), result, spec)  # pruned runs FINISHED, curves = epochs_trained
    pruned = [n for n in layout.children if layout.state(n) == "pruned"]
    assert pruned, "the median pruner should stop the tiny learning rates"
    assert all(layout.children[n].data.metrics["epochs_trained"] < 8 for n in pruned)


def test_failing_trials_are_recorded_and_the_study_goes_on(write_spec, store):
    spec = loaded(iris_spec(write_spec, sampler="grid",
                            params={"lr": "[0.05, 1.0e+6]", "optimizer": "sgd", "momentum": "0.99", "epochs": "5"}),
                  store)
    result = hpo.run(spec)
    layout = assert_layout(MlflowClient(store, registry_uri=store), result, spec)  # the failed run FAILED, with an hpo.reason
    states = {t.params["lr"]: t for t in layout.trials}
    assert states[1e6].state == optuna.trial.TrialState.FAIL
    assert "loss became" in states[1e6].user_attrs["reason"]
    assert states[0.05].state == optuna.trial.TrialState.COMPLETE
    assert "loss became" in layout.children[states[1e6].number].data.tags["hpo.reason"]
    assert result.counts == {"complete": 1, "pruned": 0, "failed": 1}
    assert result.test_metrics["accuracy"] > 0.5  # the refit still ran on the good trial


def test_existing_study_needs_resume_and_resume_tops_up(write_spec, store):
    spec = loaded(iris_spec(write_spec, n_trials=2), store)
    first = hpo.run(spec)
    client = MlflowClient(store, registry_uri=store)
    assert_layout(client, first, spec)
    with pytest.raises(StudyExistsError, match="--resume"):
        hpo.run(spec)
    second = hpo.run(spec, resume=True, n_trials=4)
    assert second.parent_run_id == first.parent_run_id
    layout = assert_layout(client, second, spec, resumed=True)  # still one parent run, one child per trial
    assert sorted(layout.children) == [0, 1, 2, 3]


def test_checkpoints_kept_only_for_the_top_trials(write_spec, store):
    spec = loaded(iris_spec(write_spec, n_trials=5), store)
    result = hpo.run(spec)
    # keep_checkpoints: 1 -> checkpoint/trial.pt on the best trial only, which carries the best tag
    layout = assert_layout(MlflowClient(store, registry_uri=store), result, spec)
    assert layout.children[result.best_number].data.tags["best"] == "true"


def test_out_of_memory_is_recorded_with_the_batch_size_and_a_hint(write_spec, store):
    """A real allocation failure (an MLP whose layers would need terabytes) fails that trial only."""
    spec = loaded(iris_spec(write_spec, sampler="grid", params={"width": "[8, 2000000]", "depth": "2", "epochs": "2"}),
                  store)
    result = hpo.run(spec)
    layout = assert_layout(MlflowClient(store, registry_uri=store), result, spec)  # the failed run FAILED, with an hpo.reason
    by_width = {t.params["width"]: t for t in layout.trials}
    big = by_width[2000000]
    assert big.state == optuna.trial.TrialState.FAIL
    assert "out of memory" in big.user_attrs["reason"] and "batch_size" in big.user_attrs["reason"]
    assert by_width[8].state == optuna.trial.TrialState.COMPLETE
    assert "lower batch_size" in layout.children[big.number].data.tags["hpo.reason"]
    assert result.counts["failed"] == 1 and result.counts["complete"] == 1


def test_setup_objects_are_kept_out_of_gc_during_the_study_and_a_callers_freeze_is_kept(write_spec, store,
                                                                                         monkeypatch):
    import gc

    import hpo.executors.local as local

    seen = []
    real = local.train

    def observed(*args, **kwargs):
        seen.append(gc.get_freeze_count())
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "train", observed)
    gc.unfreeze()
    hpo.run(iris_spec(write_spec, name="gc", n_trials=2, params={"epochs": "1"}), tracking_uri=store)
    assert len(seen) == 2 and min(seen) > 10_000  # the set-up's objects were frozen while trials trained
    assert gc.get_freeze_count() == 0  # and given back to the collector afterwards

    gc.freeze()  # a caller that froze its own objects (before a fork, say) keeps exactly those frozen
    try:
        mine = gc.get_freeze_count()
        hpo.run(iris_spec(write_spec, name="gc2", n_trials=1, params={"epochs": "1"}), tracking_uri=store)
        # not unfrozen (0) and nothing of hpo's added; frozen objects may still be freed by reference counting
        assert 0.9 * mine < gc.get_freeze_count() <= mine
    finally:
        gc.unfreeze()


def test_a_callers_active_mlflow_experiment_neither_breaks_the_study_nor_is_changed(write_spec, store, tmp_path):
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = (tracking_utils._tracking_uri, fluent._active_experiment_id)
    try:  # a notebook that works with its own MLflow store and experiment, then runs a study
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mine' / 'mlflow.db'}")
        mlflow.create_experiment("first")
        mine = mlflow.set_experiment("second").experiment_id  # an id the study's store does not give its experiment
        result = hpo.run(iris_spec(write_spec, name="notebook", n_trials=1, params={"epochs": "1"}),
                         tracking_uri=store)
        assert result.model_uri and result.experiment_id != mine
        assert fluent._active_experiment_id == mine  # the caller's experiment is still the active one
        assert tracking_utils._tracking_uri == f"sqlite:///{tmp_path / 'mine' / 'mlflow.db'}"
    finally:
        tracking_utils._tracking_uri, fluent._active_experiment_id = previous


def test_two_studies_in_one_process_from_two_folders_keep_to_their_own_default_stores(tmp_path, monkeypatch):
    """The default ``sqlite:///mlruns/mlflow.db`` is the folder's where each study starts, also in one process
    (a notebook that changes folder): MLflow keeps one engine per URI string, and the second study must not
    write through the first one's pooled connections into the first folder's database."""
    spec = ("name: {name}\ndata: {{dataset: iris}}\nmodel: mlp\nsearch: {{sampler: random, n_trials: 2, seed: 0}}\n"
            "cv: {{folds: 2}}\nparams: {{lr: 0.01, width: 8, epochs: 2}}\ntracking: {{report: false}}\n"
            "execution: {{max_concurrent_trials: 2}}\n")
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "spec.yaml").write_text(spec.format(name=name))
        monkeypatch.chdir(tmp_path / name)
        result = hpo.run("spec.yaml")
        assert result.counts["complete"] == 2 and result.tracking_uri.startswith(f"sqlite:///{tmp_path}")
    for name, other in (("first", "second"), ("second", "first")):
        client = MlflowClient(f"sqlite:///{tmp_path / name / 'mlruns' / 'mlflow.db'}")
        assert client.get_experiment_by_name(other) is None, f"{other}'s runs landed in {name}/mlruns"
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
        assert all(r.data.metrics.get("cv_accuracy_mean") is not None for r in runs if r.data.tags["hpo.role"] == "trial")
