"""The layout helper itself: it passes on a real study's store and fails on a copy broken in one place."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

import hpo
from tests._layout import assert_layout

SPEC = """
name: layout
data: {dataset: iris}
model: mlp
search: {sampler: random, n_trials: 3, seed: 1}
cv: {folds: 2}
params:
  lr: {low: 1.0e-3, high: 1.0e-1, log: true}
  width: [8, 16]
  epochs: 2
tracking: {keep_checkpoints: 2, report: false}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One real study: its store folder, spec, result and the layout read from it."""
    base = tmp_path_factory.mktemp("layout")
    (base / "spec.yaml").write_text(SPEC)
    spec = hpo.load_spec(base / "spec.yaml").replace(tracking_uri=f"sqlite:///{base / 'mlruns' / 'mlflow.db'}")
    result = hpo.run(spec)
    return base / "mlruns", spec, result, assert_layout(MlflowClient(spec.tracking.uri), result, spec)


def test_a_real_study_has_the_layout(study):
    layout = study[3]
    assert sorted(layout.children) == [0, 1, 2] and {layout.state(n) for n in layout.children} == {"complete"}
    assert sum(bool(MlflowClient(study[1].tracking.uri).list_artifacts(r.info.run_id)) for r in
               layout.children.values()) == 2  # keep_checkpoints: 2


def _best(children):
    return next(r for r in children.values() if r.data.tags.get("best") == "true").info.run_id


def _other(children):
    """The worst trial: never tied with the best one."""
    return min(children.values(), key=lambda r: r.data.metrics["cv_accuracy_mean"]).info.run_id


# each breaks one thing (client on the copy, parent run id, child runs by trial number) -> what the helper says
BREAKS = {
    "a trial's hpo.state deleted": (lambda c, p, ch: c.delete_tag(_other(ch), "hpo.state"), r"hpo\.state: got None"),
    "the best tag moved": (lambda c, p, ch: (c.delete_tag(_best(ch), "best"), c.set_tag(_other(ch), "best", "true")),
                           r"tagged best"),
    "an epoch logged twice": (lambda c, p, ch: c.log_metric(_other(ch), "val_accuracy", 0.5, step=1), "twice"),
    "a curve past epochs_trained": (lambda c, p, ch: c.log_metric(_best(ch), "fold1/train_loss", 1.0, step=3),
                                    "different lengths"),
    "a trial left RUNNING": (lambda c, p, ch: c.update_run(_other(ch), status="RUNNING"), "left RUNNING"),
    "the parent KILLED": (lambda c, p, ch: c.set_terminated(p, status="KILLED"), "parent run status"),
    "a lineage tag changed": (lambda c, p, ch: c.set_tag(p, "hpo.spec_hash", "0" * 12), "lineage tags"),
    "a best-param tag deleted": (lambda c, p, ch: c.delete_tag(p, "hpo.best.lr"), r"hpo\.best\.\* tags"),
    "a test metric changed": (lambda c, p, ch: c.log_metric(p, "test_accuracy", -1.0), "test_accuracy"),
}


@pytest.mark.parametrize("broken", list(BREAKS))
def test_a_broken_copy_of_the_store_fails(study, tmp_path, broken):
    folder, spec, result, layout = study
    copy = tmp_path / "mlruns"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("artifacts"))  # the runs keep their artifact URIs
    copied = spec.replace(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    mine = MlflowClient(copied.tracking.uri)
    breaks, says = BREAKS[broken]
    breaks(mine, layout.parent.info.run_id, layout.children)
    with pytest.raises(AssertionError, match=says):
        assert_layout(mine, result, copied)
