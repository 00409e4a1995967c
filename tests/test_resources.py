"""What each trial used (sys/* on its child run) and what the study cost (study/* on the parent run),
measured where the trials run, read back from a real sqlite MLflow store."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

import hpo
from hpo.costs import rss_kib
from tests._layout import assert_layout

STUDY = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: grid, seed: 0}}
cv: {{folds: 2}}
params: {{lr: [0.01, 0.05], epochs: 5, width: 16, patience: 0}}
execution: {{max_concurrent_trials: {concurrent}}}
tracking: {{report: false}}
"""


@pytest.mark.parametrize("concurrent", [1, 2])
def test_trials_carry_their_resource_metrics_and_the_parent_the_studys_compute(write_spec, store, concurrent):
    start_rss_mb = rss_kib()[1] / 1024
    path = write_spec(STUDY.format(name=f"res{concurrent}", concurrent=concurrent), f"res{concurrent}")
    result = hpo.run(path, tracking_uri=store)
    client = MlflowClient(store, registry_uri=store)
    assert_layout(client, result, hpo.load_spec(path).replace(tracking_uri=store))
    children = client.search_runs([result.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    assert len(children) == 2
    train_rows = 120  # iris: 150 rows, 30 held out for the test; 2 folds each train on half of the rest
    for run in children:
        m, rid = run.data.metrics, run.info.run_id
        seconds = client.get_metric_history(rid, "sys/epoch_seconds")
        speed = {x.step: x.value for x in client.get_metric_history(rid, "sys/examples_per_second")}
        assert [x.step for x in seconds] == [1, 2, 3, 4, 5] and all(x.value > 0 for x in seconds)
        for x in seconds:  # examples/s is the epoch's training rows (all folds) over its seconds
            assert speed[x.step] * x.value == pytest.approx(train_rows, rel=1e-6)
        assert sum(x.value for x in seconds) <= m["duration_s"] + 1e-3
        # peak_memory_mb is what the trial added to the resident set it started with: that start is a process
        # holding torch (over 100 MB), and the peak is above it
        started_at = m["sys/peak_rss_mb"] - m["peak_memory_mb"]
        assert 100 < started_at <= m["sys/peak_rss_mb"] and started_at > 0.5 * start_rss_mb, m
        assert 0 < m["sys/cpu_seconds"]
        assert not any(k.startswith("sys/gpu_") for k in m), "no GPU here"
    parent = client.get_run(result.parent_run_id).data.metrics
    assert parent["study/trial_seconds"] == pytest.approx(sum(r.data.metrics["duration_s"] for r in children))
    assert 0 < parent["study/wall_seconds"] <= result.duration_s + 1e-6
    assert 0 < parent["study/training_share"] < 1, "set-up and the refit are outside the trials"
    assert "study/gpu_seconds" not in parent


def test_a_trials_epoch_seconds_fall_within_its_duration_whatever_delays_its_start(monkeypatch):
    """A pause between the meter starting and the folds starting (locally, another trial's thread holding the
    GIL) is in the trial's duration as well as in its first epoch: one clock for both."""
    import time

    from hpo import crossval
    from hpo.data import load_dataset
    from hpo.folds import make_folds
    from hpo.params import PARAMS, default_value
    from hpo.trial import COMPLETE, TrainingSet, TrialSpec, Verdict

    iris = load_dataset("iris", seed=0)
    data = crossval.FoldData.build(TrainingSet(iris.x_train, iris.y_train, iris.n_classes,
                                               make_folds(iris.y_train, 2, seed=0, stratified=True)), "cpu")
    params = {**{name: default_value(name, "mlp") for name in PARAMS}, "epochs": 3, "patience": 0, "width": 8}
    real = crossval.run_trial
    monkeypatch.setattr(crossval, "run_trial", lambda *a, **k: time.sleep(0.05) or real(*a, **k))
    seconds = []
    result = crossval.train(TrialSpec(0, params, "mlp", "accuracy", "maximize", seed=0), data,
                            lambda epoch, m: seconds.append(m["sys/epoch_seconds"]) or Verdict.GO, threads=1)
    assert result.state == COMPLETE and len(seconds) == 3 and seconds[0] >= 0.05
    assert sum(seconds) <= result.duration_s


def test_study_compute_is_the_union_of_the_trials_intervals():
    from types import SimpleNamespace

    from hpo.resources import study_compute

    results = [SimpleNamespace(duration_s=3.0, worker="node cuda (H100)"), SimpleNamespace(duration_s=2.0, worker="x cpu")]
    out = study_compute(results, [(0.0, 3.0), (1.0, 2.0), (5.0, 6.0)], wall_s=10.0, gpu_share=0.5)
    assert out == {"study/trial_seconds": 5.0, "study/wall_seconds": 10.0, "study/training_share": 0.4,
                   "study/gpu_seconds": 1.5}


def test_show_and_compare_print_each_trials_memory_and_each_studys_compute(write_spec, store):
    import io

    from rich.console import Console

    from hpo.cli import compare, show

    path = write_spec(STUDY.format(name="shown", concurrent=1), "shown")
    hpo.run(path, tracking_uri=store)
    study = show.open_study("shown", store)
    rows = show.trial_rows(study)
    assert all(r["peak_rss_mb"] > 100 and r["gpu_peak_mb"] is None for r in rows)
    out = io.StringIO()
    Console(file=out, width=250).print(show.render_table("shown", rows, "maximize", "accuracy"))
    assert "RSS MB" in out.getvalue() and "GPU MB" not in out.getvalue()
    csv = io.StringIO()
    show.write_csv(rows, csv)
    assert csv.getvalue().splitlines()[0].split(",")[6] == "peak_rss_mb"

    summary = compare.study_summary("shown", store)
    assert set(summary["compute"]) == {"trial_seconds", "wall_seconds", "training_share"}
    out = io.StringIO()
    Console(file=out, width=250).print(compare.render_table([summary]))
    assert "trial compute" in out.getvalue() and "share training" in out.getvalue()
