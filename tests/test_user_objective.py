"""A user objective (``objective: {function: module:attr, ...}``): the user's own training step, end to end.

The user's module is written into ``tmp_path`` by each test (never importable from the repository);
modules imported in this process get a unique name so that ``sys.modules`` never serves one test's
module to another. Real studies, a real sqlite MLflow store read back with ``MlflowClient``, real Ray.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

import hpo
from hpo.errors import SpecError
from hpo.spec import load_spec
from hpo.tracking import optuna_storage_for
from tests.conftest import run_cli

# a two-input model on a torch Dataset, trained with a custom (focal) loss
TOWERS = '''
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import hpo


class Pairs(Dataset):
    """Iris as two inputs per item (sepal and petal measurements) and a label."""

    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return (self.x[i, :2], self.x[i, 2:]), self.y[i]


def load():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return Pairs(x, y), y


class TwoTower(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a, self.b = nn.Linear(2, width), nn.Linear(2, width)
        self.head = nn.Linear(2 * width, 3)

    def forward(self, pair):
        xa, xb = pair
        return self.head(torch.cat([torch.relu(self.a(xa)), torch.relu(self.b(xb))], 1))


def focal(logits, y, gamma):
    logp = torch.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def accuracy(model, split):
    model.eval()
    right = 0
    with torch.no_grad():
        for pair, y in DataLoader(split, batch_size=256):
            right += int((model(pair).argmax(1) == y).sum())
    model.train()
    return right / len(split)


def fit_fold(params, fold, ctx):
    model = TwoTower(params["width"])
    opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
    best = -1.0
    for epoch in range(1, params["epochs"] + 1):
        for pair, y in DataLoader(fold.train, batch_size=16, shuffle=True):
            opt.zero_grad()
            loss = focal(model(pair), y, params["gamma"])
            loss.backward()
            opt.step()
        if ctx.refit:
            continue
        acc = accuracy(model, fold.val)
        if acc > best:
            best = acc
            ctx.save(model)
        if ctx.report(epoch, {"val_acc": acc, "train_loss": float(loss)}) is not hpo.GO:
            break
    if ctx.refit:
        ctx.save(model)
        (Path(__file__).parent / "refit.json").write_text(json.dumps({"params": params, "n": len(fold.train)}))
    return {"val_acc": best}


def evaluate(model, test):
    return {"acc": accuracy(model, test), "n_test": float(len(test))}
'''

SPEC = """
name: towers
data: {factory: towers:load, task: classification}
objective: {function: towers:fit_fold, metric: val_acc, direction: maximize, evaluate: towers:evaluate}
search: {sampler: tpe, n_trials: 8, seed: 3, pruner: median}
cv: {folds: 3}
tracking: {report: false}
params:
  lr: [0.05, 1.0e-6]
  width: [4, 8]
  gamma: {low: 0.0, high: 2.0}
  epochs: 5
"""

_ids = itertools.count()


def _project(tmp_path: Path, source: str, spec: str, module: str = "towers") -> Path:
    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    (folder / "spec.yaml").write_text(textwrap.dedent(spec).replace("towers:", f"{module}:"))
    return folder


def _client(store: str) -> MlflowClient:
    return MlflowClient(store, registry_uri=store)


@pytest.mark.slow
def test_a_dataset_objective_with_a_custom_loss_runs_a_pruned_cv_study_end_to_end(tmp_path):
    folder = _project(tmp_path, TOWERS, SPEC)
    store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    proc = run_cli("run", "spec.yaml", cwd=folder, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = optuna.load_study(study_name="towers", storage=optuna_storage_for(store)).get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 8 and optuna.trial.TrialState.PRUNED in states, states
    client = _client(store)
    runs = client.search_runs([client.get_experiment_by_name("towers").experiment_id])
    children = {int(r.data.tags["hpo.trial"]): r for r in runs if r.data.tags.get("hpo.role") == "trial"}
    parent = next(r for r in runs if r.data.tags.get("hpo.role") == "study")

    # curves: every fold's, and their mean (what the pruner saw), at every epoch trained
    done = next(t for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    run = children[done.number].info.run_id
    assert [m.step for m in client.get_metric_history(run, "val_acc")] == [1, 2, 3, 4, 5]
    for k in range(3):
        assert len(client.get_metric_history(run, f"fold{k}/val_acc")) == 5
    means = {m.step: m.value for m in client.get_metric_history(run, "val_acc")}
    assert means == pytest.approx({e: v for e, v in done.intermediate_values.items()})

    # a pruned trial stopped in every fold at the same epoch
    pruned = next(t for t in trials if t.state == optuna.trial.TrialState.PRUNED)
    run = children[pruned.number].info.run_id
    lengths = {len(client.get_metric_history(run, f"fold{k}/val_acc")) for k in range(3)}
    assert lengths == {len(pruned.intermediate_values)} and lengths != {5}
    assert children[pruned.number].info.status == "KILLED" or children[pruned.number].data.tags.get("hpo.state") == "pruned"

    # the best trial refit on all training data for the mean best epoch, tested with evaluate, registered
    refit = json.loads((folder / "refit.json").read_text())
    assert refit["n"] == 120 and refit["params"]["epochs"] == parent.data.metrics["refit_epochs"]
    assert parent.data.metrics["test_n_test"] == 30 and 0 <= parent.data.metrics["test_acc"] <= 1
    assert parent.data.tags["hpo.code_hash"] and parent.data.tags["hpo.packed"].startswith("false")
    assert len(client.search_model_versions("name='towers'")) == 1
    model = hpo.load_model(parent.info.run_id, tracking_uri=store)
    import torch

    assert model((torch.zeros(2, 2), torch.zeros(2, 2))).shape == (2, 3)


FAILING = '''
import numpy as np
from torch import nn


def fit_fold(params, fold, ctx):
    mode = params["mode"]
    ctx.report(1, {"val_acc": 0.5})
    if mode == "raise" and fold.index == 1:
        raise ValueError("the user's code broke")
    if mode == "nometric":
        return {"accuracy": 0.5}
    if mode == "nan":
        return {"val_acc": float("nan")}
    if mode != "nosave":
        ctx.save(nn.Linear(4, 3))
    return {"val_acc": float(len(fold.train)) / 1000}
'''

FAILING_SPEC = """
name: failing
data: {dataset: iris}
objective: {function: towers:fit_fold, metric: val_acc, direction: maximize}
search: {sampler: grid}
cv: {folds: 2}
tracking: {report: false, uri: STORE}
params:
  mode: [ok, raise, nometric, nan, nosave]
"""


def test_each_kind_of_failure_in_the_users_function_is_a_failed_trial_with_its_reason(tmp_path):
    module = f"failing_{next(_ids)}_{os.getpid()}"
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    folder = _project(tmp_path, FAILING, FAILING_SPEC.replace("STORE", store), module)
    result = hpo.run(folder / "spec.yaml")
    reasons = {t.number: (t.state, t.reason) for t in result.trials}
    study = optuna.load_study(study_name="failing", storage=optuna_storage_for(store))
    mode = {t.number: t.params["mode"] for t in study.get_trials()}
    by_mode = {mode[n]: r for n, r in reasons.items()}
    assert by_mode["ok"][0] == "complete"
    assert by_mode["raise"] == ("failed", "fold 1: ValueError: the user's code broke")
    assert by_mode["nometric"][0] == "failed" and "not a dict with 'val_acc'" in by_mode["nometric"][1]
    assert by_mode["nan"] == ("failed", "fold 0: val_acc is nan")
    assert by_mode["nosave"] == ("failed", "fold 0: the objective never called ctx.save(model)")
    assert result.best_number is not None and result.test_metrics  # the study went on, and refit the one that worked


# --------------------------------------------------------------------------- broken specs

GOOD = '''
def fit_fold(params, fold, ctx):
    return {"val_acc": 1.0}


def two_args(params, fold):
    return {}


def evaluate(model, test):
    return {}


def evaluate_one(model):
    return {}
'''

BROKEN = [
    ("model_beside_objective", "model: mlp\nobjective: {function: MOD:fit_fold, metric: val_acc, direction: maximize}",
     "model", "not used with objective:"),
    ("search_metric_beside_objective",
     "objective: {function: MOD:fit_fold, metric: val_acc, direction: maximize}\nsearch: {n_trials: 2, metric: accuracy}",
     "search.metric", "set objective.metric instead"),
    ("unknown_metric_without_direction", "objective: {function: MOD:fit_fold, metric: val_f1}",
     "objective.direction", "required: 'val_f1' is not a metric hpo knows"),
    ("metric_named_like_a_fold_curve", "objective: {function: MOD:fit_fold, metric: fold0/acc, direction: maximize}",
     "objective.metric", "not starting with 'fold'"),
    ("function_module_missing", "objective: {function: nosuchmodule:fit, metric: val_acc, direction: maximize}",
     "objective.function", "cannot import module 'nosuchmodule'"),
    ("function_attribute_missing", "objective: {function: MOD:fit_fld, metric: val_acc, direction: maximize}",
     "objective.function", "has no attribute 'fit_fld' (did you mean 'fit_fold'?)"),
    ("function_takes_two_arguments", "objective: {function: MOD:two_args, metric: val_acc, direction: maximize}",
     "objective.function", "must take 3 positional arguments (params, fold, ctx)"),
    ("evaluate_takes_one_argument",
     "objective: {function: MOD:fit_fold, metric: val_acc, direction: maximize, evaluate: MOD:evaluate_one}",
     "objective.evaluate", "must take 2 positional arguments (model, test)"),
    ("function_key_missing", "objective: {metric: val_acc, direction: maximize}", "objective.function",
     "required key is missing"),
    ("unknown_objective_key", "objective: {function: MOD:fit_fold, metirc: val_acc, direction: maximize}",
     "objective.metirc", "unknown key"),
    ("direction_not_a_direction", "objective: {function: MOD:fit_fold, metric: val_acc, direction: up}",
     "objective.direction", "must be one of maximize, minimize"),
    ("known_metric_wrong_direction", "objective: {function: MOD:fit_fold, metric: val_log_loss, direction: maximize}",
     "objective.direction", "log_loss is better when lower"),
    ("pack_folds_true", "objective: {function: MOD:fit_fold, metric: val_acc, direction: maximize}\n"
     "execution: {pack_folds: true}", "execution.pack_folds", "cannot be true with objective:"),
    ("parameter_name_not_a_name", "objective: {function: MOD:fit_fold, metric: val_acc, direction: maximize}\n"
     "params: {2lr: 0.1}", "params.2lr", "must be a parameter name"),
    ("neither_model_nor_objective", "", "model", "required key is missing"),
]


@pytest.mark.parametrize(("case", "body", "key", "rule"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_objective_spec_names_the_key_and_the_rule(tmp_path: Path, case, body, key, rule):
    module = f"objectives_{case}_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(GOOD))
    spec = tmp_path / "spec.yaml"
    body = body.replace("MOD", module)
    search = "" if "search:" in body else "search: {n_trials: 2}\n"
    spec.write_text(f"name: bad\ndata: {{dataset: iris}}\n{search}{body}\n")
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    got = [(k, r) for k, r in err.value.problems if k == key]
    assert any(rule in r for _k, r in got), err.value.problems
    assert str(spec) in str(err.value)


def test_a_broken_objective_spec_exits_2_from_run_with_nothing_written(tmp_path: Path):
    (tmp_path / "mine.py").write_text(textwrap.dedent(GOOD))
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: bad\ndata: {dataset: iris}\nsearch: {n_trials: 2}\n"
                    "objective: {function: mine:two_args, metric: val_f1}\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = run_cli("run", str(spec), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{spec}: objective.function: mine:two_args must take 3 positional arguments" in proc.stderr
    assert f"{spec}: objective.direction: required" in proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_torch_dataset_without_an_objective_is_refused_with_the_fix(tmp_path: Path):
    module = f"towers_nobj_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(TOWERS))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bad\ndata: {{factory: {module}:load, task: classification}}\nmodel: mlp\n"
                    f"search: {{n_trials: 2}}\ntracking: {{uri: 'sqlite:///{tmp_path}/mlruns/mlflow.db'}}\n")
    with pytest.raises(hpo.errors.DataError, match="only your own training step reads: use objective:"):
        hpo.run(spec)


# --------------------------------------------------------------------------- Ray, Ctrl-C and resume

ARRAYS = '''
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import hpo


def fit_fold(params, fold, ctx):
    torch.set_num_threads(ctx.threads)
    model = nn.Sequential(nn.Linear(4, params["width"]), nn.ReLU(), nn.Linear(params["width"], 3))
    opt = torch.optim.SGD(model.parameters(), lr=params["lr"], momentum=0.9)
    for epoch in range(1, params["epochs"] + 1):
        for x, y in DataLoader(fold.train, batch_size=32, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.as_tensor(x).float()), torch.as_tensor(y)).backward()
            opt.step()
        time.sleep(params["pause"])
        if fold.val is not None:
            with torch.no_grad():
                acc = (model(torch.as_tensor(fold.val.x).float()).argmax(1).numpy() == fold.val.y).mean()
            if ctx.report(epoch, {"val_accuracy": float(acc)}) is not hpo.GO:
                break
    ctx.save(model)
    return {"val_accuracy": float(acc) if fold.val is not None else 0.0}
'''

ARRAYS_SPEC = """
name: NAME
data: {dataset: iris}
objective: {function: towers:fit_fold, metric: val_accuracy}
search: {sampler: random, n_trials: 3, seed: 0}
cv: {folds: 2}
tracking: {report: false}
EXECUTION
params:
  lr: {low: 0.01, high: 0.2, log: true}
  width: [8, 16]
  epochs: EPOCHS
  pause: PAUSE
"""


def _arrays_spec(name: str, epochs: int, pause: float, execution: str = "") -> str:
    return (ARRAYS_SPEC.replace("NAME", name).replace("EPOCHS", str(epochs)).replace("PAUSE", str(pause))
            .replace("EXECUTION", execution))


@pytest.mark.slow
def test_an_objective_study_runs_on_a_local_ray(tmp_path):
    spec = _arrays_spec("ray-objective", 3, 0.0, "execution: {executor: ray, max_concurrent_trials: 2}")
    folder = _project(tmp_path, ARRAYS, spec, "rayobj")
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    elsewhere = tmp_path / "elsewhere"  # the module is found through the spec's folder, not the cwd
    elsewhere.mkdir()
    proc = run_cli("run", str(folder / "spec.yaml"), "--tracking-uri", store, cwd=elsewhere, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = optuna.load_study(study_name="ray-objective", storage=optuna_storage_for(store)).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    client = _client(store)
    runs = client.search_runs([client.get_experiment_by_name("ray-objective").experiment_id])
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert not [r for r in children if r.data.tags["hpo.worker"].startswith("local")]  # ran on Ray workers
    assert all(len(client.get_metric_history(r.info.run_id, "fold1/val_accuracy")) == 3 for r in children)
    parent = next(r for r in runs if r.data.tags.get("hpo.role") == "study")
    assert 0 <= parent.data.metrics["test_accuracy"] <= 1  # no evaluate: the task's metrics on the model's outputs
    assert len(client.search_model_versions("name='ray-objective'")) == 1


@pytest.mark.slow
def test_ctrl_c_mid_trial_then_resume_finishes_exactly_n_trials(tmp_path):
    folder = _project(tmp_path, ARRAYS, _arrays_spec("cut-objective", 20, 0.05), "cutobj")
    store = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "spec.yaml"], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    db = folder / "mlruns" / "optuna.db"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if db.exists() and _mid_trial(db):
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, f"{out[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err and "--resume" in out
    proc = run_cli("run", "spec.yaml", "--resume", cwd=folder, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(study_name="cut-objective", storage=optuna_storage_for(store)).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    client = _client(store)
    runs = client.search_runs([client.get_experiment_by_name("cut-objective").experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len(client.search_model_versions("name='cut-objective'")) == 1


def _mid_trial(db: Path) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return bool(con.execute("select 1 from trial_intermediate_values v join trials t on v.trial_id = "
                                    "t.trial_id where t.state = 'RUNNING'").fetchall())
    except sqlite3.Error:
        return False


# --------------------------------------------------------------------------- WilcoxonPruner: fold by fold

BY_FOLD = '''
from pathlib import Path

from torch import nn


def fit_fold(params, fold, ctx):
    with open(Path(__file__).parent / "folds.log", "a") as log:
        log.write(f"{params['quality']} {fold.index}\\n")
    for epoch in (1, 2):
        ctx.report(epoch, {"score": params["quality"] + 0.01 * fold.index * epoch})
    ctx.save(nn.Linear(4, 3))
    return {"score": params["quality"] + 0.01 * fold.index}
'''


def test_the_wilcoxon_pruner_runs_folds_one_after_another_and_skips_the_rest_of_a_worse_trial(tmp_path):
    module = f"byfold_{next(_ids)}_{os.getpid()}"
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    spec = f"""
    name: byfold
    data: {{dataset: iris}}
    objective: {{function: {module}:fit_fold, metric: score, direction: maximize}}
    search: {{sampler: random, n_trials: 6, seed: 1, pruner: wilcoxon}}
    cv: {{folds: 5}}
    tracking: {{report: false, uri: '{store}'}}
    params:
      quality: [0.9, 0.1]
    """
    folder = _project(tmp_path, BY_FOLD, spec, module)
    result = hpo.run(folder / "spec.yaml")
    runs = [line.split() for line in (folder / "folds.log").read_text().splitlines()]
    assert runs[-1] == ["0.9", "-1"] and ["0.9", "-1"] not in runs[:-1]  # then the refit on all training data
    runs = runs[:-1]
    # folds in order, each to its end before the next begins
    per_trial, current = [], []
    for quality, k in runs:
        if k == "0" and current:
            per_trial.append(current)
            current = []
        current.append((float(quality), int(k)))
    per_trial.append(current)
    assert all([k for _q, k in t] == list(range(len(t))) for t in per_trial)
    study = optuna.load_study(study_name="byfold", storage=optuna_storage_for(store))
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.params["quality"] == 0.1 for t in pruned), [(t.params, t.state) for t in trials]
    for t in pruned:  # the fold values so far, at step = fold index; the folds left were not run
        assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
        assert len(t.intermediate_values) < 5 and t.user_attrs["reason"].startswith("pruned after fold")
    best = study.best_trial
    assert best.params["quality"] == 0.9 and sorted(best.intermediate_values) == [0, 1, 2, 3, 4]
    client = _client(store)
    run = next(r for r in result.trials if r.number == best.number)
    child = client.search_runs([client.get_experiment_by_name("byfold").experiment_id],
                               filter_string=f"tags.`hpo.trial` = '{run.number}'")[0]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "fold3/score")] == [1, 2]


def test_submit_ships_the_objective_and_evaluate_modules_and_refuses_one_outside(tmp_path, monkeypatch):
    from hpo.jobs import package

    tag = f"{next(_ids)}_{os.getpid()}"
    train, score, far = f"subtrain_{tag}", f"subscore_{tag}", f"subfar_{tag}"
    proj, outside = tmp_path / "proj", tmp_path / "outside"
    proj.mkdir()
    outside.mkdir()
    (proj / f"{train}.py").write_text(textwrap.dedent(GOOD))
    (proj / f"{score}.py").write_text(textwrap.dedent(GOOD))
    (outside / f"{far}.py").write_text(textwrap.dedent(GOOD))
    spec = ("name: x\ndata: {dataset: iris}\nsearch: {n_trials: 1}\n"
            "objective: {function: %s:fit_fold, metric: val_acc, direction: maximize, evaluate: %s:evaluate}\n")
    (proj / "near.yaml").write_text(spec % (train, score))
    monkeypatch.chdir(proj)
    work = tmp_path / "job"
    work.mkdir()
    assert package("near.yaml", work, proj) == "near.yaml"
    assert sorted(p.name for p in work.iterdir()) == sorted(["near.yaml", f"{train}.py", f"{score}.py"])
    (proj / "far.yaml").write_text(spec % (far, score))
    monkeypatch.syspath_prepend(str(outside))  # importable here, but not from the folder being submitted
    with pytest.raises(SpecError, match=f"objective.function: {far}:fit_fold comes from .*outside the working"):
        package("far.yaml", tmp_path / "job2", proj)
