"""Several objectives, pruning on the first, constraints and the refit's selection rule: real
studies on iris into a sqlite MLflow store in a temp dir, read back with MlflowClient."""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import hpo
from hpo.selection import chosen, front, select
from hpo.tracking import optuna_storage_for
from tests._layout import assert_layout
from tests.conftest import run_cli

MO = """
name: {name}
data: {{dataset: iris}}
model: mlp
search:
  sampler: {sampler}
  n_trials: {n_trials}
  seed: 0
  pruner: {pruner}
  objectives: [accuracy, {{metric: n_params, direction: minimize}}{more}]
{extra}
cv: {{folds: 2}}
params:
  lr: {{low: 1.0e-4, high: 3.0e-1, log: true}}
  width: [4, 8, 32, 128]
  depth: [1, 2]
  epochs: 4
"""


def mo_spec(write_spec, name="mo", sampler="tpe", n_trials=10, pruner="successive_halving", more="", extra=""):
    return write_spec(MO.format(name=name, sampler=sampler, n_trials=n_trials, pruner=pruner, more=more,
                                extra=extra), name)


def _study(name, store):
    return optuna.load_study(study_name=name, storage=optuna_storage_for(store))


def test_a_multi_objective_study_prunes_on_the_first_objective_and_records_its_front(write_spec, store):
    path = mo_spec(write_spec, more=", inference_ms", extra="  select: knee")
    result = hpo.run(path, tracking_uri=store)
    study = _study("mo", store)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "n_params", "inference_ms"]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, "successive halving on the first objective's curve prunes some of 10 trials"
    members = front(study)
    assert members and not {t.number for t in pruned} & {t.number for t in members}  # pruned: never on the front
    for t in pruned:  # the curve the pruner saw is kept on the trial (Optuna keeps none for several objectives)
        assert 1 <= len(t.user_attrs["hpo.curve"]) < 4
    # the refit trial is the knee of the front, said in the summary and on the parent run
    knee = select(members, ["maximize", "minimize", "minimize"], "knee")
    assert result.best_number == knee.number and result.selected.startswith(f"knee: trial #{knee.number} of a Pareto")
    layout = assert_layout(MlflowClient(store, registry_uri=store), result, hpo.load_spec(path).replace(tracking_uri=store))
    parent = layout.parent
    assert parent.data.tags["hpo.select"] == result.selected
    for t in members:  # every objective on the front's runs
        run = layout.children[t.number]
        assert run.data.metrics["cv_accuracy_mean"] == pytest.approx(t.values[0])
        assert (run.data.metrics["n_params"], run.data.metrics["inference_ms"]) == pytest.approx(tuple(t.values[1:]))
    client = MlflowClient(store)
    files = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"pareto_front.csv"} <= files
    reports = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/pareto_front.html", "report/pareto_front.png"} <= reports
    # a resume with more trials: the front, its pareto tags and the refit follow the new trials
    again = hpo.run(path, tracking_uri=store, resume=True, n_trials=13)
    assert sum(again.counts.values()) == 13
    assert_layout(MlflowClient(store, registry_uri=store), again, hpo.load_spec(path).replace(tracking_uri=store),
                  resumed=True)


def test_hpo_show_and_compare_show_the_front(write_spec, store, tmp_path):
    mo_spec(write_spec, n_trials=5, pruner="none")
    hpo.run(tmp_path / "mo.yaml", tracking_uri=store)
    shown = run_cli("show", "mo", "--tracking-uri", store, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "accuracy (maximize), n_params, Pareto front in bold" in shown.stdout
    assert shown.stdout.count("pareto") == len(front(_study("mo", store)))
    csv = run_cli("show", "mo", "--tracking-uri", store, "--csv", cwd=tmp_path)
    assert csv.stdout.splitlines()[0].startswith("number,state,value,n_params,cv_std")
    compared = run_cli("compare", "mo", "--tracking-uri", store, cwd=tmp_path)
    assert compared.returncode == 0 and f"{len(front(_study('mo', store)))} trials" in compared.stdout


def _trial(number, values):
    return create_trial(state=TrialState.COMPLETE, values=values, params={"x": 0.5},
                        distributions={"x": FloatDistribution(0, 1)})


def test_select_rules_pick_first_knee_and_weighted():
    trials = [_trial(0, [0.95, 9000.0]), _trial(1, [0.90, 800.0]), _trial(2, [0.70, 100.0])]
    for i, t in enumerate(trials):
        t.number = i
    dirs = ["maximize", "minimize"]
    assert select(trials, dirs, "first").number == 0
    assert select(trials, dirs, "knee").number == 1  # scaled: (0, 1), (0.2, 0.08), (1, 0)
    assert select(trials, dirs, {"weighted": [1.0, 0.0]}).number == 0
    assert select(trials, dirs, {"weighted": [0.0, 1.0]}).number == 2
    assert select(trials, dirs, {"weighted": [1.0, 1.0]}).number == 1


@pytest.mark.parametrize("rule", ["first", "{weighted: [0.0, 1.0]}"])
def test_the_refit_follows_each_select_rule(rule, write_spec, store):
    path = mo_spec(write_spec, name="sel", n_trials=6, pruner="none", extra=f"  select: {rule}")
    result = hpo.run(path, tracking_uri=store)
    spec = hpo.load_spec(path).replace(tracking_uri=store)
    picked, _ = chosen(_study("sel", store), spec)
    assert result.best_number == picked.number
    parent = MlflowClient(store).get_run(result.parent_run_id)
    assert parent.data.tags["hpo.best_trial"] == str(picked.number)
    members = front(_study("sel", store))
    if rule == "first":
        assert picked.values[0] == max(t.values[0] for t in members)
    else:  # all weight on n_params: the smallest model of the front
        assert picked.values[1] == min(t.values[1] for t in members)


CONSTRAINED = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: random, n_trials: 6, seed: 1, constraints: ["n_params <= {bound}"]}}
cv: {{folds: 2}}
params:
  width: [4, 64]
  lr: 0.05
  epochs: 3
"""


def test_constraints_keep_infeasible_trials_out_of_the_refit(write_spec, store):
    path = write_spec(CONSTRAINED.format(name="small", bound=100), "small")
    result = hpo.run(path, tracking_uri=store)
    study = _study("small", store)
    feasible = {t.number: t.user_attrs["hpo.feasible"] for t in study.trials}
    assert set(feasible.values()) == {True, False}  # width 4: 35 parameters; width 64: 547
    assert feasible[result.best_number] is True
    for t in study.trials:
        assert t.user_attrs["hpo.feasible"] == (t.user_attrs["hpo.costs"]["n_params"] <= 100)
        assert t.constraints == {"n_params <= 100": pytest.approx(t.user_attrs["hpo.costs"]["n_params"] - 100)}
    runs = MlflowClient(store).search_runs([result.experiment_id], "tags.`hpo.role` = 'trial'")
    assert {r.data.tags["hpo.trial"]: r.data.tags["hpo.feasible"] for r in runs} == \
           {str(n): str(v).lower() for n, v in feasible.items()}
    assert_layout(MlflowClient(store, registry_uri=store), result, hpo.load_spec(path).replace(tracking_uri=store))


def test_no_feasible_trial_is_a_clear_error_and_nothing_is_refit(write_spec, store, tmp_path):
    # the stop target is met by every trial's accuracy, but an infeasible trial has no value for the stop rules
    path = write_spec(CONSTRAINED.format(name="tiny", bound=10).replace("seed: 1,", "seed: 1, stop: {target: 0.0},"),
                      "tiny")
    proc = run_cli("run", str(path), "--tracking-uri", store, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "none of the 6 complete trials meets search.constraints (n_params <= 10) of study 'tiny', so nothing " \
           "is refit" in proc.stderr
    assert "Traceback" not in proc.stderr
    client = MlflowClient(store)
    parent = client.search_runs([client.get_experiment_by_name("tiny").experiment_id],
                                "tags.`hpo.role` = 'study'")[0]
    assert parent.info.status == "FAILED" and "none of the 6 complete trials" in parent.data.tags["hpo.reason"]
    assert "hpo.model_uri" not in parent.data.tags
    assert all(not math.isnan(t.user_attrs["hpo.costs"]["n_params"]) for t in _study("tiny", store).trials)
