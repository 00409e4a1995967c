"""Samplers and their options, configurations tried first (enqueue, warm start) and study-level stop
rules: real Optuna samplers, real studies on iris into a sqlite MLflow store in a temp dir."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo import space
from hpo.errors import SpecError
from hpo.search import make_sampler
from hpo.spec import parse_spec
from hpo.stop_rules import StopRules
from hpo.tracking import optuna_storage_for
from tests._layout import assert_layout
from tests.conftest import run_cli

SAMPLERS = ("tpe", "gp", "cmaes", "qmc", "random")

SPACE = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: {sampler}, n_trials: {n_trials}, seed: {seed}{extra}}}
cv: {{folds: 2}}
params:
  lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
  dropout: {{low: 0.0, high: 0.5}}
  width: {{low: 8, high: 32}}
  epochs: 2
"""


def _spec(sampler="tpe", n_trials=8, seed=0, extra="", name="s"):
    return parse_spec(SPACE.format(name=name, sampler=sampler, n_trials=n_trials, seed=seed, extra=extra))


def _points(sampler: str, seed: int, rounds: int = 6) -> list[list[dict]]:
    """Ask two trials at a time (two concurrent workers), tell both; the points asked, per round."""
    spec = _spec(sampler, n_trials=2 * rounds, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(spec, concurrency=2))
    out = []
    for _ in range(rounds):
        asked = [study.ask(), study.ask()]
        params = [space.suggest(t, spec) for t in asked]
        for t, p in zip(asked, params, strict=True):
            study.tell(t, -abs(p["lr"] - 0.01) - abs(p["dropout"] - 0.2) - abs(p["width"] - 20) / 100)
        out.append(params)
    return out


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_is_reproducible_and_concurrent_trials_get_different_points(sampler):
    rounds = 4 if sampler == "gp" else 6  # GP asks take a few tenths of a second each
    a, b, other = _points(sampler, 0, rounds), _points(sampler, 0, rounds), _points(sampler, 1, rounds)
    assert a == b  # same seed, same points
    assert a != other  # another seed, other points
    assert all(first != second for first, second in a)  # two trials in flight never get the same point


def test_sampler_options_reach_optunas_samplers():
    tpe = make_sampler(_spec("tpe", extra=", sampler_options: {n_startup_trials: 3, multivariate: false}"), 1)
    assert (tpe._n_startup_trials, tpe._multivariate, tpe._constant_liar) == (3, False, False)
    assert make_sampler(_spec("tpe"), 4)._constant_liar  # concurrent trials: constant liar by default
    gp = make_sampler(_spec("gp", n_trials=30, extra=", sampler_options: {deterministic_objective: true}"), 1)
    assert (gp._n_startup_trials, gp._deterministic) == (10, True)
    cma = make_sampler(_spec("cmaes", extra=", sampler_options: {with_margin: true, popsize: 6}"), 1)
    assert (cma._with_margin, cma._popsize) == (True, 6)
    qmc = make_sampler(_spec("qmc", extra=", sampler_options: {qmc_type: halton}"), 1)
    assert (qmc._qmc_type, qmc._scramble) == ("halton", True)


@pytest.mark.parametrize(("sampler", "options"), [("gp", "{n_startup_trials: 2}"), ("cmaes", "{popsize: 4}")])
def test_a_study_runs_with_each_model_based_sampler_and_names_its_metric(sampler, options, write_spec, store):
    path = write_spec(SPACE.format(name=f"run-{sampler}", sampler=sampler, n_trials=4, seed=0,
                                   extra=f", sampler_options: {options}"))
    result = hpo.run(path, tracking_uri=store)
    assert result.counts["complete"] == 4 and result.model_uri
    assert_layout(MlflowClient(store, registry_uri=store), result, hpo.load_spec(path).replace(tracking_uri=store))
    study = optuna.load_study(study_name=result.name, storage=optuna_storage_for(store))
    assert study.metric_names == ["accuracy"]  # optuna-dashboard and Optuna's plots say "accuracy"
    parent = MlflowClient(store).get_run(result.parent_run_id)
    assert parent.data.params["sampler"] == sampler
    assert parent.data.tags["hpo.stop_reason"] == "budget: 4 finished trials"


# ------------------------------------------------------------------------- enqueue and warm start

ENQUEUE = ", enqueue: [{lr: 0.003, width: 16}, {dropout: 0.25}]"


def test_enqueued_configurations_run_first_and_are_tagged(write_spec, store):
    path = write_spec(SPACE.format(name="enq", sampler="tpe", n_trials=3, seed=0, extra=ENQUEUE))
    result = hpo.run(path, tracking_uri=store)
    study = optuna.load_study(study_name="enq", storage=optuna_storage_for(store))
    first, second, third = sorted(study.trials, key=lambda t: t.number)
    assert (first.params["lr"], first.params["width"]) == (0.003, 16)
    assert second.params["dropout"] == 0.25 and set(second.params) == {"lr", "dropout", "width"}
    runs = {r.data.tags["hpo.trial"]: r for r in MlflowClient(store).search_runs(
        [result.experiment_id], "tags.`hpo.role` = 'trial'")}
    assert [runs[str(n)].data.tags.get("hpo.source") for n in range(3)] == ["enqueue", "enqueue", None]
    # a resume neither enqueues them again nor re-runs them
    again = hpo.run(path, tracking_uri=store, resume=True, n_trials=4)
    assert sum(again.counts.values()) == 4
    assert sum(t.user_attrs.get("hpo.source") == "enqueue" for t in
               optuna.load_study(study_name="enq", storage=optuna_storage_for(store)).trials) == 2


def test_warm_start_enqueues_the_other_studys_best_and_refuses_another_space(write_spec, store, tmp_path):
    first = hpo.run(write_spec(SPACE.format(name="last-week", sampler="random", n_trials=4, seed=3, extra=""),
                               "a"), tracking_uri=store)
    storage = optuna_storage_for(store)
    done = optuna.load_study(study_name="last-week", storage=storage).trials
    best_two = sorted(done, key=lambda t: (-t.value, t.number))[:2]
    warm = ", warm_start: {study: last-week, top_k: 2}"
    result = hpo.run(write_spec(SPACE.format(name="this-week", sampler="tpe", n_trials=3, seed=0, extra=warm),
                                "b"), tracking_uri=store)
    trials = sorted(optuna.load_study(study_name="this-week", storage=storage).trials, key=lambda t: t.number)
    assert [t.params for t in trials[:2]] == [t.params for t in best_two]
    assert [t.user_attrs["hpo.source"] for t in trials[:2]] == [f"warm_start last-week#{t.number}" for t in best_two]
    assert first.best_value is not None and result.counts["complete"] == 3

    other_space = write_spec(SPACE.format(name="other", sampler="tpe", n_trials=3, seed=0, extra=warm)
                             .replace("high: 1.0e-1, log", "high: 0.5, log"), "c")
    with pytest.raises(SpecError, match=r"search.warm_start.study: study 'last-week' searched another space "
                                        r"\(lr is \[0.001, 0.1\] log there and \[0.001, 0.5\] log here\)"):
        hpo.run(other_space, tracking_uri=store)
    missing = write_spec(SPACE.format(name="other", sampler="tpe", n_trials=3, seed=0,
                                      extra=", warm_start: {study: nope}"), "d")
    proc = run_cli("run", str(missing), "--tracking-uri", store, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "search.warm_start.study: no study 'nope' in this study's Optuna storage; studies there: " \
           "last-week, this-week" in proc.stderr
    assert "Traceback" not in proc.stderr
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert "other" not in names  # refused before anything was written


# ------------------------------------------------------------------------- stop rules

def test_stop_rules_count_finished_trials_and_min_delta():
    stop = _spec(extra=", stop: {plateau_trials: 3, min_delta: 0.05}").search.stop
    rules = StopRules(stop, "minimize", "rmse")
    for value in (1.0, 0.97, None, 0.96):  # 0.97 and 0.96 are better, but not by 0.05; None: a pruned trial
        assert rules.reason() is None
        rules.observe(value)
    assert rules.reason() == "plateau" and rules.best == 0.96
    assert "has not improved by 0.05 in 3 finished trials" in rules.describe("plateau")
    rules.observe(0.9)  # an improvement of 0.06: the count starts again
    assert rules.reason() is None
    target = StopRules(_spec(extra=", stop: {target: 0.5}").search.stop, "minimize", "rmse")
    target.observe(0.6)
    assert target.reason() is None
    target.observe(0.5)
    assert target.reason() == "target"


def test_target_and_plateau_stop_the_study_early_then_refit_and_resume_runs_nothing_more(write_spec, store):
    target = write_spec(SPACE.format(name="target", sampler="random", n_trials=6, seed=0,
                                     extra=", stop: {target: 0.0}"), "t")
    result = hpo.run(target, tracking_uri=store)
    assert sum(result.counts.values()) == 1 and result.model_uri and result.test_metrics  # refit as usual
    assert result.stop_reason.startswith("target: the best accuracy ") and "after 1 finished trials" in result.stop_reason
    client = MlflowClient(store)
    assert client.get_run(result.parent_run_id).data.tags["hpo.stop_reason"] == result.stop_reason
    assert_layout(MlflowClient(store, registry_uri=store), result, hpo.load_spec(target).replace(tracking_uri=store))

    plateau = write_spec(SPACE.format(name="plateau", sampler="random", n_trials=8, seed=0,
                                      extra=", stop: {plateau_trials: 2, min_delta: 1.0}"), "p")
    result = hpo.run(plateau, tracking_uri=store)
    assert sum(result.counts.values()) == 3  # the first sets the mark, two more cannot beat it by 1.0
    assert result.stop_reason.startswith("plateau: ") and result.model_uri
    again = hpo.run(plateau, tracking_uri=store, resume=True)
    assert sum(again.counts.values()) == 3 and again.stop_reason == result.stop_reason
