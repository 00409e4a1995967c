"""A user's own training step (``fit_fold(params, fold, ctx)``) run per fold in lockstep (hpo.objective).

The user module is written into ``tmp_path`` and imported through :func:`hpo.usercode.load_target`, as a
spec's ``objective.function`` will be; the lockstep rules are checked with small functions that report
by hand.
"""

from __future__ import annotations

import math
import os
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import hpo
from hpo.data import load_dataset
from hpo.folds import make_folds
from hpo.lockstep import Lockstep
from hpo.objective import folds_of, run_objective_refit, run_objective_trial
from hpo.trial import COMPLETE, FAILED, KILLED, PRUNED, TrialSpec, Verdict
from hpo.usercode import load_target

FIT = """\
    import torch
    from torch import nn

    import hpo


    def fit_fold(params, fold, ctx):
        torch.manual_seed(ctx.seed)
        x = torch.as_tensor(fold.train.x, dtype=torch.float32)
        y = torch.as_tensor(fold.train.y)
        xv = torch.as_tensor(fold.val.x, dtype=torch.float32)
        yv = torch.as_tensor(fold.val.y)
        mean, std = x.mean(0), x.std(0)
        model = nn.Sequential(nn.Linear(x.shape[1], params["hidden"]), nn.Tanh(), nn.Linear(params["hidden"], fold.n_classes))
        opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
        best = 0.0
        for epoch in range(1, params["epochs"] + 1):
            model.train()
            logits = model((x - mean) / std)
            # a custom loss: cross-entropy plus a margin penalty on the true class
            true = logits.gather(1, y[:, None]).squeeze(1)
            loss = nn.functional.cross_entropy(logits, y) + 0.1 * torch.relu(1.0 - true).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.eval()
            with torch.no_grad():
                acc = float(((model((xv - mean) / std)).argmax(1) == yv).float().mean())
            if acc > best:
                best = acc
                ctx.save(model)
            if ctx.report(epoch, {"val_acc": acc, "train_loss": loss.item()}) is not hpo.GO:
                break
        return {"val_acc": best}
"""


def _user_fn(tmp_path: Path, source: str = FIT, attr: str = "fit_fold"):
    module = f"userfit_{os.getpid()}_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    return load_target(f"{module}:{attr}", spec_path=tmp_path / "spec.yaml")


def _iris_folds(k: int = 3):
    ds = load_dataset("iris")
    return folds_of(ds.x_train, ds.y_train, make_folds(ds.y_train, k, 0, True), ds.n_classes)


def _spec(**params) -> TrialSpec:
    return TrialSpec(number=2, params={"hidden": 8, "lr": 0.05, "epochs": 6, **params}, model="user",
                     metric="val_acc", direction="maximize", seed=11)


def test_a_user_objective_trains_every_fold_and_its_reports_reach_the_study_as_fold_means(tmp_path: Path) -> None:
    fn, folds = _user_fn(tmp_path), _iris_folds()
    seen: list[tuple[int, dict[str, float]]] = []
    result = run_objective_trial(_spec(), fn, folds, on_epoch=lambda e, m: seen.append((e, m)) or Verdict.GO)
    assert result.state == COMPLETE, result.reason
    assert [e for e, _ in seen] == list(range(1, 7)) and result.epochs_trained == 6
    for _e, m in seen:  # per-fold curves and their mean, as a built-in trial reports them
        assert m["val_acc"] == pytest.approx(np.mean([m[f"fold{k}/val_acc"] for k in range(3)]))
        assert {f"fold{k}/train_loss" for k in range(3)} <= set(m) and "train_loss" in m
    assert len(result.fold_values) == 3 and result.value == pytest.approx(np.mean(result.fold_values))
    for k, (value, epoch) in enumerate(zip(result.fold_values, result.fold_best_epochs, strict=True)):
        assert value == max(m[f"fold{k}/val_acc"] for _e, m in seen)
        assert seen[epoch - 1][1][f"fold{k}/val_acc"] == value  # the best epoch is the first at the best value
    assert [sorted(s) for s in result.checkpoint["folds"]] == [["0.bias", "0.weight", "2.bias", "2.weight"]] * 3
    again = run_objective_trial(_spec(), fn, folds)  # the fold seeds are the trial's: the same numbers again
    assert again.fold_values == result.fold_values


@pytest.mark.parametrize(("verdict", "state"), [(Verdict.PRUNE, PRUNED), (Verdict.STOP, KILLED)])
def test_a_prune_or_stop_answer_reaches_every_fold(tmp_path: Path, verdict: Verdict, state: str) -> None:
    fn, folds = _user_fn(tmp_path), _iris_folds()
    epochs: list[int] = []
    result = run_objective_trial(_spec(epochs=50), fn, folds,
                                 on_epoch=lambda e, m: epochs.append(e) or (verdict if e == 2 else Verdict.GO))
    assert (result.state, result.epochs_trained, epochs) == (state, 2, [1, 2])
    assert len(result.fold_values) == 3 and result.fold_best_epochs == [min(e, 2) for e in result.fold_best_epochs]


def test_a_fold_that_returns_early_stops_counting_for_later_epochs() -> None:
    def fit(params, fold, ctx):
        for epoch in range(1, (2 if fold.index == 0 else 4) + 1):
            ctx.report(epoch, {"val_acc": float(fold.index)})
        ctx.save({"w": np.zeros(1)})
        return {"val_acc": float(fold.index)}

    seen = []
    result = run_objective_trial(_spec(), fit, _iris_folds(), on_epoch=lambda e, m: seen.append((e, m)) or Verdict.GO)
    assert result.state == COMPLETE
    assert [(e, m["val_acc"]) for e, m in seen] == [(1, 1.0), (2, 1.0), (3, 1.5), (4, 1.5)]
    assert "fold0/val_acc" not in seen[2][1]


FAILS = {
    "raises": ("raise ValueError('bad batch')", "fold 1: ValueError: bad batch"),
    "no_metric": ("return {'loss': 1.0}", "fold 1: fit returned ['loss'], not a dict with 'val_acc'"),
    "nan": ("return {'val_acc': float('nan')}", "fold 1: val_acc is nan"),
    "no_save": ("return {'val_acc': 0.5}", "fold 1: the objective never called ctx.save(model)"),
    "bad_name": ("ctx.report(4, {'val_acc': 0.5, 'acc (%)': 50.0})",
                 "fold 1: ValueError: ctx.report: the metric name 'acc (%)' may only hold letters, digits, underscores, "
                 "dashes, periods, spaces, colons and slashes, so MLflow would refuse it; rename it"),
}


@pytest.mark.parametrize("case", list(FAILS))
def test_each_kind_of_failure_fails_the_trial_naming_the_fold(case: str) -> None:
    action, reason = FAILS[case]
    namespace: dict = {}
    exec(textwrap.dedent(f"""\
        def fit(params, fold, ctx):
            for epoch in (1, 2, 3):
                ctx.report(epoch, {{"val_acc": 0.5}})
            if fold.index == 1:
                {action}
            ctx.save({{"w": 0}})
            return {{"val_acc": 0.5}}
    """), namespace)
    result = run_objective_trial(_spec(), namespace["fit"], _iris_folds())
    assert (result.state, result.reason) == (FAILED, reason)


def test_a_failing_fold_releases_the_folds_waiting_on_it() -> None:
    def fit(params, fold, ctx):
        if fold.index == 2:
            raise RuntimeError("out of memory")
        for epoch in range(1, 1000):
            ctx.report(epoch, {"val_acc": 0.5})  # would wait for fold 2 for ever
        return {"val_acc": 0.5}

    done = []
    worker = threading.Thread(target=lambda: done.append(run_objective_trial(_spec(), fit, _iris_folds())))
    worker.start()
    worker.join(timeout=30)
    assert done and done[0].state == FAILED and done[0].reason == "fold 2: RuntimeError: out of memory"


def test_the_context_carries_the_built_in_fold_seeds_and_the_verdicts_are_public() -> None:
    got = {}

    def fit(params, fold, ctx):
        got[fold.index] = (ctx.seed, ctx.threads, ctx.precision, ctx.refit, ctx.device, len(fold.train), len(fold.val))
        ctx.save({"w": 0})
        return {"val_acc": 1.0}

    run_objective_trial(_spec(), fit, _iris_folds(), threads=6)
    assert [got[k][0] for k in range(3)] == [11 * 1_000_003 + 2 * 101 + k for k in range(3)]
    assert {got[k][1:5] for k in range(3)} == {(6, "fp32", False, "cpu")}  # one fold at a time: the trial's threads
    assert sum(got[k][6] for k in range(3)) == 120 and all(got[k][5] + got[k][6] == 120 for k in range(3))
    assert (hpo.GO, hpo.PRUNE, hpo.STOP) == (Verdict.GO, Verdict.PRUNE, Verdict.STOP)
    assert hpo.Fold.__name__ == "Fold" and hpo.TrialContext.__name__ == "TrialContext"
    lock = Lockstep([0], "val_acc", None)
    assert lock.report(0, 1, {"val_acc": math.pi}) is Verdict.GO


def test_each_folds_global_rng_draws_are_its_own_and_reproducible() -> None:
    """Folds take turns, each on its own torch RNG state seeded with its fold seed: what a function draws
    from torch's global generator is what it would draw alone, whatever the other folds draw."""
    import torch

    def fit(params, fold, ctx):
        for epoch in (1, 2, 3):
            extra = torch.rand(fold.index * 7)  # folds draw different amounts: no effect on each other
            ctx.report(epoch, {"val_acc": float(torch.rand(1)) + 0 * float(extra.sum())})
        ctx.save({"w": 0})
        return {"val_acc": 0.0}

    seen: list[dict[str, float]] = []
    run_objective_trial(_spec(), fit, _iris_folds(), on_epoch=lambda e, m: seen.append(m) or Verdict.GO)
    for k in range(3):
        gen = torch.Generator().manual_seed(11 * 1_000_003 + 2 * 101 + k)
        expected = []
        for _ in range(3):
            torch.rand(k * 7, generator=gen)
            expected.append(float(torch.rand(1, generator=gen)))
        assert [m[f"fold{k}/val_acc"] for m in seen] == expected


def test_a_dataset_is_split_into_subsets_and_the_refit_trains_on_all_of_it(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import Subset, TensorDataset

    ds = load_dataset("iris")
    data = TensorDataset(torch.as_tensor(ds.x_train, dtype=torch.float32), torch.as_tensor(ds.y_train))
    folds = folds_of(data, ds.y_train, make_folds(ds.y_train, 3, 0, True), ds.n_classes)
    assert all(isinstance(f.train.x, Subset) and isinstance(f.val.x, Subset) for f in folds)
    assert sorted(i for f in folds for i in f.val.x.indices) == list(range(len(data)))
    assert all(np.array_equal(f.train.y, ds.y_train[f.train.indices]) for f in folds)

    fit = _user_fn(tmp_path, textwrap.dedent("""\
        import torch
        from torch import nn


        def fit_fold(params, fold, ctx):
            xs = torch.stack([fold.train.x[i][0] for i in range(len(fold.train))])
            ys = torch.stack([fold.train.x[i][1] for i in range(len(fold.train))])
            model = nn.Linear(xs.shape[1], fold.n_classes)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for epoch in range(1, params["epochs"] + 1):
                loss = nn.functional.cross_entropy(model(xs), ys)
                opt.zero_grad()
                loss.backward()
                opt.step()
                ctx.report(epoch, {"val_acc": 0.0})
            ctx.save(model)
            return {"val_acc": 0.0, "epochs_run": float(params["epochs"]), "refit": float(ctx.refit),
                    "n": float(len(fold.train)), "no_val": float(fold.val is None)}
    """))
    state = torch.random.get_rng_state()
    module, weights, returned = run_objective_refit({"epochs": 9, "lr": 0.1}, fit, data, ds.y_train, ds.n_classes,
                                                    epochs=4, seed=5, direction="maximize", metric="val_acc")
    assert returned == {"val_acc": 0.0, "epochs_run": 4.0, "refit": 1.0, "n": 120.0, "no_val": 1.0}
    assert isinstance(module, torch.nn.Linear) and not module.training and sorted(weights) == ["bias", "weight"]
    assert torch.equal(module.weight, weights["weight"])
    assert torch.equal(torch.random.get_rng_state(), state)  # the refit's draws leave the caller's RNG alone
    again = run_objective_refit({"epochs": 9}, fit, data, ds.y_train, ds.n_classes, epochs=4, seed=5,
                                direction="maximize", metric="val_acc")
    assert torch.equal(again[1]["weight"], weights["weight"])  # seeded: the same refit again


def test_a_refit_that_saves_nothing_says_so() -> None:
    ds = load_dataset("iris")
    with pytest.raises(ValueError, match=r"never called ctx.save\(model\) in the refit"):
        run_objective_refit({}, lambda p, f, c: {"val_acc": 1.0}, ds.x_train, ds.y_train, ds.n_classes, epochs=None,
                            seed=0, direction="maximize", metric="val_acc")


@pytest.mark.parametrize(("name", "ok"), [
    ("val_acc", True), ("val/acc", True), ("loss: train-1.5", True), ("x" * 243, True),
    ("acc (%)", False), ("", False), ("a//b", False), ("../x", False), ("/x", False), ("x/", False), ("x" * 244, False),
])
def test_metric_names_are_checked_against_mlflows_rule_with_the_fold_prefix(name: str, ok: bool) -> None:
    from mlflow.entities import Metric
    from mlflow.utils.validation import _validate_metric

    from hpo.objective import metric_name_problem

    assert (metric_name_problem(name) is None) is ok
    if ok:  # what hpo lets through, MLflow takes, with the longest fold prefix
        _validate_metric(f"fold99/{name}", 1.0, 0, 1)
        assert Metric(f"fold99/{name}", 1.0, 0, 1).key
