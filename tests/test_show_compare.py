"""``hpo show``, ``hpo compare`` and ``hpo dashboard`` on a real store: two small iris studies
(one with failing trials) run into one sqlite store, read back through the CLI and checked
against Optuna and ``MlflowClient``."""

from __future__ import annotations

import csv
import io
import json
import sys
import types

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo.cli import compare as compare_cmd
from hpo.cli import dashboard as dashboard_cmd
from hpo.cli import main as cli_main
from hpo.cli import show as show_cmd
from hpo.tracking import optuna_storage_for

GRID = """
name: cmp-grid
data: {dataset: iris}
model: mlp
search: {sampler: grid, seed: 0}
cv: {folds: 2}
params:
  lr: [0.05, 1.0e+6]
  width: [8, 16]
  optimizer: sgd
  momentum: 0.99
  epochs: 3
"""

TPE = """
name: cmp-tpe
data: {dataset: iris}
model: mlp
search: {sampler: tpe, n_trials: 4, seed: 0}
cv: {folds: 2}
params:
  lr: {low: 1.0e-3, high: 1.0e-1, log: true}
  width: [8, 16]
  epochs: 2
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two finished studies in one store: cmp-grid (2 complete, 2 failed) and cmp-tpe (4 complete)."""
    tmp = tmp_path_factory.mktemp("show")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    results = {}
    for name, text in (("cmp-grid", GRID), ("cmp-tpe", TPE)):
        (tmp / f"{name}.yaml").write_text(text)
        results[name] = hpo.run(tmp / f"{name}.yaml", tracking_uri=uri)
    assert results["cmp-grid"].counts == {"complete": 2, "pruned": 0, "failed": 2}
    return {"uri": uri, "results": results}


def _study(store, name):
    return optuna.load_study(study_name=name, storage=optuna_storage_for(store["uri"]))


def _cli(capsys, monkeypatch, *args):
    monkeypatch.setenv("COLUMNS", "200")
    code = cli_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _expected_order(study):
    done = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: (-t.value, t.number))
    rest = sorted((t for t in study.trials if t.state.name != "COMPLETE"), key=lambda t: t.number)
    return [t.number for t in done + rest]


@pytest.mark.slow
def test_show_table_best_first_with_states(store, capsys, monkeypatch):
    code, out, err = _cli(capsys, monkeypatch, "show", "cmp-grid", "--tracking-uri", store["uri"])
    assert code == 0, err
    assert "cmp-grid: accuracy (maximize), best first" in out
    rows = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    numbers = [int(r[1]) for r in rows]
    assert numbers == _expected_order(_study(store, "cmp-grid"))
    states = [r[2].strip() for r in rows]
    assert states == ["complete", "complete", "failed", "failed"]
    assert "best" in rows[0][-2] and "lr" in out and "width" in out
    assert "2 complete, 2 failed" in out
    for r in rows[2:]:  # the failure's reason is shown
        assert "non-finite" in r[-2].lower() or "nan" in r[-2].lower() or "inf" in r[-2].lower()


@pytest.mark.slow
def test_show_csv_and_json_match_optuna_and_mlflow(store, capsys, monkeypatch):
    study = _study(store, "cmp-grid")
    code, out, _ = _cli(capsys, monkeypatch, "show", "cmp-grid", "--tracking-uri", store["uri"], "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["number"]) for r in rows] == _expected_order(study)
    assert list(rows[0])[:6] == ["number", "state", "value", "cv_std", "epochs_trained", "duration_s"]
    by_number = {t.number: t for t in study.trials}
    client = MlflowClient(store["uri"])
    for r in rows:
        t = by_number[int(r["number"])]
        assert float(r["lr"]) == t.params["lr"] and int(r["width"]) == t.params["width"]
        run = client.get_run(r["run_id"])
        assert run.data.tags["hpo.trial"] == r["number"] and run.data.tags["hpo.state"] == r["state"]
        if r["state"] == "complete":
            assert float(r["value"]) == t.value
        else:
            assert r["value"] == "" and r["reason"]

    code, out, _ = _cli(capsys, monkeypatch, "show", "cmp-grid", "--tracking-uri", store["uri"], "--json")
    doc = json.loads(out)
    assert (doc["study"], doc["metric"], doc["direction"]) == ("cmp-grid", "accuracy", "maximize")
    assert [t["number"] for t in doc["trials"]] == _expected_order(study)
    assert [t["number"] for t in doc["trials"] if t["best"]] == [study.best_trial.number]
    for t in doc["trials"]:
        assert t["params"] == by_number[t["number"]].params
        assert t["epochs"] == len(by_number[t["number"]].intermediate_values)


@pytest.mark.slow
def test_compare_side_by_side(store, capsys, monkeypatch):
    code, out, err = _cli(capsys, monkeypatch, "compare", "cmp-grid", "cmp-tpe", "--tracking-uri", store["uri"])
    assert code == 0, err
    client = MlflowClient(store["uri"])
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in out.splitlines() if line.startswith("│")}
    header = next(line for line in out.splitlines() if "cmp-grid" in line and "cmp-tpe" in line)
    assert header.index("cmp-grid") < header.index("cmp-tpe")
    expected_best, expected_test = [], []
    for name in ("cmp-grid", "cmp-tpe"):
        result = store["results"][name]
        expected_best.append(f"{result.best_value:.4f}")
        test = client.get_run(result.parent_run_id).data.metrics["test_accuracy"]
        assert test == pytest.approx(result.test_metrics["accuracy"])
        expected_test.append(f"{test:.4f}")
    assert lines["best CV value"] == expected_best
    assert lines["test value"] == expected_test
    assert lines["metric"] == ["accuracy (max)", "accuracy (max)"]
    assert lines["trials"] == ["4", "4"] and lines["complete"] == ["2", "4"] and lines["failed"] == ["2", "0"]
    assert lines["pruned"] == ["0", "0"] and lines["sampler"] == ["grid", "tpe"]
    assert all(lines["wall time"]) and lines["best lr"][0] == "0.05"
    assert lines["best width"] == [str(store["results"][n].best_params["width"]) for n in ("cmp-grid", "cmp-tpe")]


@pytest.mark.slow
def test_compare_json_and_csv(store, capsys, monkeypatch):
    code, out, _ = _cli(capsys, monkeypatch, "compare", "cmp-tpe", "cmp-grid", "--tracking-uri", store["uri"],
                        "--json")
    assert code == 0
    docs = json.loads(out)
    assert [d["name"] for d in docs] == ["cmp-tpe", "cmp-grid"]
    client = MlflowClient(store["uri"])
    for d in docs:
        result = store["results"][d["name"]]
        run = client.get_run(result.parent_run_id)
        assert d["best_value"] == result.best_value and d["best_trial"] == result.best_number
        assert d["best_params"] == result.best_params
        assert d["test_value"] == run.data.metrics["test_accuracy"]
        assert d["test_metrics"]["f1_macro"] == run.data.metrics["test_f1_macro"]
        assert (d["complete"], d["pruned"], d["failed"]) == (result.counts["complete"], result.counts["pruned"],
                                                            result.counts["failed"])
        assert 0 < d["wall_s"] <= (run.info.end_time - run.info.start_time) / 1000 + 1e-6
        assert d["parent_run_id"] == result.parent_run_id and d["settings"]["dataset"] == "iris"
    code, out, _ = _cli(capsys, monkeypatch, "compare", "cmp-tpe", "cmp-grid", "--tracking-uri", store["uri"],
                        "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == ["cmp-tpe", "cmp-grid"]
    assert float(rows[1]["best_value"]) == store["results"]["cmp-grid"].best_value
    assert rows[0]["best_width"] and rows[0]["test_accuracy"]


@pytest.mark.slow
def test_unknown_or_repeated_study_is_an_error(store, capsys, monkeypatch):
    code, _, err = _cli(capsys, monkeypatch, "compare", "cmp-grid", "cmp-tp", "--tracking-uri", store["uri"])
    assert code == 2 and "did you mean 'cmp-tpe'" in err
    code, _, err = _cli(capsys, monkeypatch, "compare", "cmp-grid", "cmp-grid", "--tracking-uri", store["uri"])
    assert code == 2 and "named twice" in err
    code, _, err = _cli(capsys, monkeypatch, "show", "cmp-gird", "--tracking-uri", store["uri"])
    assert code == 2 and "did you mean 'cmp-grid'" in err


@pytest.mark.slow
def test_dashboard_says_how_to_install_or_serves_the_study(store, capsys, monkeypatch):
    monkeypatch.setattr(dashboard_cmd, "installed", lambda: False)
    code, _, err = _cli(capsys, monkeypatch, "dashboard", "cmp-tpe", "--tracking-uri", store["uri"])
    assert code == 2 and "pip install optuna-dashboard" in err

    calls = []
    fake = types.ModuleType("optuna_dashboard")
    fake.run_server = lambda storage, host, port: calls.append((storage, host, port))
    monkeypatch.setitem(sys.modules, "optuna_dashboard", fake)
    monkeypatch.setattr(dashboard_cmd, "installed", lambda: True)
    code, _, err = _cli(capsys, monkeypatch, "dashboard", "cmp-tpe", "--tracking-uri", store["uri"], "--port", "8099")
    assert code == 0
    assert calls == [(optuna_storage_for(store["uri"]), "127.0.0.1", 8099)]
    study_id = _study(store, "cmp-tpe")._study_id
    assert f"http://127.0.0.1:8099/dashboard/studies/{study_id}" in err


# ---------------------------------------------------------------------- no store needed


def test_rows_sort_by_direction_and_state():
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="minimize")
    for value in (0.5, 0.2, 0.9):
        study.add_trial(optuna.trial.create_trial(params={"x": value}, distributions={
            "x": optuna.distributions.FloatDistribution(0, 1)}, value=value))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 1)}, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={1: 0.3}))
    study.add_trial(optuna.trial.create_trial(params={"x": 0.3}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 1)}, state=optuna.trial.TrialState.FAIL,
        user_attrs={show_cmd.INTERRUPTED_ATTR: True}))
    rows = show_cmd.trial_rows(study)
    assert [(r["number"], r["state"]) for r in rows] == [(1, "complete"), (0, "complete"), (2, "complete"),
                                                         (3, "pruned"), (4, "interrupted")]
    assert rows[0]["best"] and not any(r["best"] for r in rows[1:])
    assert rows[3]["value"] is None and rows[3]["epochs"] == 1
    assert compare_cmd.fmt_duration(5.04) == "5.0s" and compare_cmd.fmt_duration(187) == "3m 07s"
    assert compare_cmd.fmt_duration(3725) == "1h 02m"


def test_attribute_names_agree_with_the_core():
    from hpo import report, study

    assert show_cmd.INTERRUPTED_ATTR == study.INTERRUPTED_ATTR
    assert show_cmd.METRIC_ATTR == report.METRIC_ATTR


def test_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("show", "compare", "report", "dashboard", "ui"):
        assert f"    {cmd}" in out
