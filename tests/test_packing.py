"""Fold packing (``execution.pack_folds``): a trial's k fold models trained as one stacked model give
the numbers of the sequential loop.

Where the arithmetic is the same it is tested as the same: the built-in MLP's hand-stacked path (batched
matrix products, one optimizer over stacked weights, each fold's own dropout stream) against the
sequential loop after one step on every CPU (weights to ``rtol 1e-5 / atol 1e-6``), and after whole trials
where this CPU's batched matrix product rounds like k single ones (weights as after one step, fold
accuracies to one validation example); where it does not (an AVX-512 AMD EPYC), whole trials drift apart
as any rounding change makes them, and are held to the convolutional models' yardstick below.

The generic path (``torch.func.vmap``, CNN and ResNet; dropout masks still drawn per fold from each fold's
own generator) runs other convolution kernels, so it is exact per step (one optimizer step: weights, BatchNorm statistics and losses to ``1e-5``) but not over many: training
at float precision is chaotic. Over whole trials its fold values are held to 0.03 accuracy (6 of 200
examples after 3 epochs here), inside the spread a rounding-only change (oneDNN off) causes in the same
kind of trial: 0.003-0.125 best accuracy in BENCHMARKS.md section 6 ("Fold packing").
"""

from __future__ import annotations

import functools
import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from sklearn.datasets import load_diabetes, load_digits
from sklearn.model_selection import KFold, StratifiedKFold

from hpo.crossval import FoldData, run_trial
from hpo.packing import PackedFolds, model_reason, study_packing
from hpo.params import PARAMS, default_value
from hpo.spec import load_spec
from hpo.training import Diverged, Learner
from hpo.trial import COMPLETE, FAILED, TrainingSet, TrialResult, TrialSpec
from tests.conftest import run_cli


def _folds(x: np.ndarray, y: np.ndarray, n_classes: int, k: int = 3) -> FoldData:
    split = StratifiedKFold(k, shuffle=True, random_state=0) if n_classes else KFold(k, shuffle=True, random_state=0)
    folds = list(split.split(x, y))
    return FoldData.build(TrainingSet(x, y, n_classes, folds), "cpu")


@functools.cache
def digits(n: int = 1795, images: bool = False) -> FoldData:
    """digits in 3 folds; 1795 examples give training parts of 1196, 1197 and 1197 (ragged last batches)."""
    x, y = load_digits(return_X_y=True)
    x = x[:n].reshape(-1, 1, 8, 8).astype(np.uint8) if images else x[:n].astype(np.float32)
    return _folds(x, y[:n], 10)


def params(model: str = "mlp", **overrides: Any) -> dict[str, Any]:
    p = {name: default_value(name, model) for name in PARAMS}
    p.update(depth=2, width=32, epochs=3, batch_size=64, lr=3e-3)
    p.update(overrides)
    return p


def both(fd: FoldData, model: str = "mlp", **overrides: Any) -> tuple[TrialResult, TrialResult]:
    """The same trial unpacked and packed."""
    p = params(model, **overrides)
    spec = TrialSpec(number=4, params=p, model=model, metric="accuracy" if fd.data.n_classes else "rmse",
                     direction="maximize" if fd.data.n_classes else "minimize", seed=7)
    unpacked = run_trial(spec, fd)
    packed = run_trial(TrialSpec(**{**spec.__dict__, "pack": True}), fd)
    assert unpacked.state == COMPLETE, unpacked.reason
    assert packed.state == COMPLETE, packed.reason
    return unpacked, packed


@functools.cache
def batched_products_round_alike() -> bool:
    """Whether this CPU's packed arithmetic (batched matrix products forward and backward, per-fold loss
    means) gives the bits of k single folds: one epoch of a plain MLP trial, packed and not. On the AVX2
    machines this was first measured on it has; on an AVX-512 AMD EPYC weights differ by ~1e-7 after one
    epoch, and whole trials at float precision then drift apart as any rounding change makes them."""
    unpacked, packed = both(digits(n=300), epochs=1)
    return all(torch.equal(a[k], b[k]) for a, b in zip(unpacked.checkpoint["folds"], packed.checkpoint["folds"],
                                                         strict=True) for k in a)


def assert_same_trial(unpacked: TrialResult, packed: TrialResult, n_val: int) -> None:
    """Where batched products round like single ones: one validation example (of the smallest fold,
    ``n_val`` examples) and weights to 1e-5. Elsewhere whole trials are held to the rounding yardstick of
    the convolutional models (0.03), and the arithmetic to one step (the ``one_packed_step`` tests)."""
    assert packed.packed == "true" and unpacked.packed == ""
    if not batched_products_round_alike():
        assert np.max(np.abs(np.subtract(packed.fold_values, unpacked.fold_values))) <= 0.03 + 1e-9
        return
    assert np.allclose(packed.fold_values, unpacked.fold_values, rtol=0, atol=1.0 / n_val + 1e-12)
    assert packed.fold_best_epochs == unpacked.fold_best_epochs
    for a, b in zip(unpacked.checkpoint["folds"], packed.checkpoint["folds"], strict=True):
        assert list(a) == list(b)  # an ordinary per-fold state dict, keys in the model's own order
        for key in a:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
            assert torch.allclose(a[key].double(), b[key].double(), rtol=1e-5, atol=1e-6), key


MLP_CASES = {
    "plain": {},
    "batch_norm": {"batch_norm": True},
    "dropout": {"dropout": 0.3},
    "batch_norm+dropout": {"batch_norm": True, "dropout": 0.2},
    "sgd_nesterov_wd": {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "lr": 0.05},
    "rmsprop": {"optimizer": "rmsprop", "momentum": 0.5, "lr": 1e-3},
    "adamw_wd": {"optimizer": "adamw", "weight_decay": 0.05},
    "adagrad": {"optimizer": "adagrad", "lr": 0.05},
    "adadelta": {"optimizer": "adadelta", "lr": 1.0},
    "adamax": {"optimizer": "adamax"},
    "grad_clip": {"grad_clip": 0.05, "lr": 0.05},
    "label_smoothing": {"label_smoothing": 0.1},
    "hinge": {"loss": "hinge"},
    "step": {"scheduler": "step", "epochs": 4},
    "cosine": {"scheduler": "cosine"},
    "onecycle": {"scheduler": "onecycle"},
    "batch_norm_merged_last_batch": {"batch_norm": True, "batch_size": 598},
    "patience": {"patience": 1, "epochs": 6, "lr": 0.1},
}


@pytest.mark.parametrize("overrides", list(MLP_CASES.values()), ids=list(MLP_CASES))
def test_a_packed_mlp_trial_gives_the_sequential_loops_numbers(overrides: dict[str, Any]) -> None:
    fd = digits()
    assert sorted({len(tr) for tr, _ in fd.folds}) == [1196, 1197]  # unequal parts: ragged last batches
    assert_same_trial(*both(fd, **overrides), n_val=598)


@pytest.mark.parametrize("overrides", list(MLP_CASES.values()), ids=list(MLP_CASES))
def test_one_packed_step_of_an_mlp_matches_the_sequential_one(overrides: dict[str, Any]) -> None:
    """Every CPU: equal training parts of 200 and one batch, one optimizer step per fold, stacked by hand."""
    fd = digits(n=300)
    overrides = {**overrides, "epochs": 1, "batch_size": 256, "patience": 0}
    a, ma = _step_metrics(fd, "mlp", False, **overrides)
    b, mb = _step_metrics(fd, "mlp", True, **overrides)
    assert (a.state, b.state, b.packed) == (COMPLETE, COMPLETE, "true")
    for k in range(3):
        assert mb[f"fold{k}/train_loss"] == pytest.approx(ma[f"fold{k}/train_loss"], rel=1e-6)
    for sa, sb in zip(a.checkpoint["folds"], b.checkpoint["folds"], strict=True):
        assert list(sa) == list(sb)
        for key in sa:
            assert torch.allclose(sa[key].double(), sb[key].double(), rtol=1e-5, atol=1e-6), key


def test_augmented_images_pack_with_each_folds_own_crops() -> None:
    fd = digits(images=True)
    assert_same_trial(*both(fd, augment=True, dropout=0.1), n_val=598)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_a_regression_trial_packs_with_each_folds_own_target_scaling(loss: str) -> None:
    x, y = load_diabetes(return_X_y=True)
    fd = _folds(x.astype(np.float32), y.astype(np.float32), 0)
    unpacked, packed = both(fd, epochs=4, batch_size=32, loss=loss)
    assert packed.packed == "true"
    assert np.allclose(packed.fold_values, unpacked.fold_values, rtol=1e-5)
    for a, b in zip(unpacked.checkpoint["folds"], packed.checkpoint["folds"], strict=True):
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
        assert a["y_std"] != 1.0  # each fold scaled its own targets


def _step_metrics(fd: FoldData, model: str, pack: bool, **overrides: Any) -> tuple[TrialResult, dict[str, float]]:
    seen: dict[str, float] = {}

    def on_epoch(epoch: int, metrics: dict[str, float]):
        seen.update(metrics)
        from hpo.trial import Verdict
        return Verdict.GO

    spec = TrialSpec(number=1, params=params(model, **overrides), model=model, metric="accuracy",
                     direction="maximize", seed=3, pack=pack)
    return run_trial(spec, fd, on_epoch), seen


@pytest.mark.parametrize(("model", "overrides"), [
    ("cnn", {"width": 8, "batch_norm": True, "dropout": 0.3}),
    ("cnn", {"width": 8, "batch_norm": False, "dropout": 0.0, "optimizer": "sgd", "momentum": 0.9}),
    ("resnet", {"depth": 20, "width": 4}),
], ids=["cnn_bn_dropout", "cnn_sgd", "resnet20"])
def test_one_packed_step_of_a_convolutional_model_matches_the_sequential_one(model: str, overrides: dict) -> None:
    """Equal training parts of 200 and one batch of 256: one optimizer step per fold, through vmap."""
    fd = digits(n=300, images=True)
    assert {len(tr) for tr, _ in fd.folds} == {200}
    a, ma = _step_metrics(fd, model, False, epochs=1, batch_size=256, **overrides)
    b, mb = _step_metrics(fd, model, True, epochs=1, batch_size=256, **overrides)
    assert (a.state, b.state, b.packed) == (COMPLETE, COMPLETE, "true")
    for k in range(3):
        assert mb[f"fold{k}/train_loss"] == pytest.approx(ma[f"fold{k}/train_loss"], rel=1e-6)
    for sa, sb in zip(a.checkpoint["folds"], b.checkpoint["folds"], strict=True):
        assert list(sa) == list(sb)
        for key in sa:  # weights after one step, and BatchNorm's running statistics and batch count
            assert torch.allclose(sa[key].double(), sb[key].double(), rtol=1e-5, atol=1e-5), key


@pytest.mark.parametrize(("model", "overrides"), [
    ("cnn", {"width": 8, "dropout": 0.2}),
    pytest.param("resnet", {"depth": 20, "width": 4}, marks=pytest.mark.slow),
], ids=["cnn", "resnet20"])
def test_whole_packed_convolutional_trials_agree_within_float_noise(model: str, overrides: dict) -> None:
    fd = digits(n=601, images=True)  # parts of 400 and 401: ragged last batches, fold by fold on views
    assert sorted({len(tr) for tr, _ in fd.folds}) == [400, 401]
    unpacked, packed = both(fd, model, epochs=3, **overrides)
    assert packed.packed == "true"
    assert np.max(np.abs(np.subtract(packed.fold_values, unpacked.fold_values))) <= 0.03 + 1e-9


def test_plateau_and_unequal_batch_counts_train_unpacked_and_say_why() -> None:
    fd = digits()
    for overrides, why in (({"scheduler": "plateau"}, "false: the plateau schedule lowers each fold's learning rate"),
                           ({"batch_size": 1196}, "false: training parts of 1196 and 1197 examples give 1 and 2 "
                                                  "batches of 1196")):
        p = params(**overrides)
        spec = TrialSpec(number=0, params=p, model="mlp", metric="accuracy", direction="maximize", seed=0)
        packed = run_trial(TrialSpec(**{**spec.__dict__, "pack": True}), fd)
        unpacked = run_trial(spec, fd)
        assert packed.packed.startswith(why), packed.packed
        assert packed.fold_values == unpacked.fold_values


def test_a_diverging_fold_fails_the_trial_naming_its_fold() -> None:
    fd = digits()
    p = params(epochs=2)
    learners = [Learner(fd.data, tr, "mlp", p, seed=k, direction="maximize", epochs=2)
                for k, (tr, _va) in enumerate(fd.folds)]
    group = PackedFolds(learners, epochs=2)
    with torch.no_grad():
        group.net.params["head.weight"][1].fill_(math.nan)  # fold 1 only
    with pytest.raises(Diverged) as caught:
        group.train_epoch()
    assert caught.value.fold == 1
    # end to end: the packed trial fails with the sequential loop's reason, fold and epoch included
    unpacked, packed = (run_trial(TrialSpec(number=0, params=params(optimizer="sgd", lr=1e12, epochs=5), model="mlp",
                                            metric="accuracy", direction="maximize", seed=0, pack=pack), fd)
                        for pack in (False, True))
    assert unpacked.state == packed.state == FAILED
    assert packed.reason == unpacked.reason and "(fold 0); lower lr or set grad_clip" in packed.reason


UNVMAPPABLE = """\
    import math

    from torch import nn


    class Net(nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.flat = nn.Flatten()
            self.body = nn.Linear(n_in, n_out)

        def forward(self, x):
            h = self.body(self.flat(x))
            if h.abs().sum().item() > 1e9:  # data-dependent control flow: vmap cannot follow it
                return h * 0
            return h  # (B, n_out)


    def build(input_shape, n_outputs):
        return Net(math.prod(input_shape), n_outputs)
"""

STACKABLE = """\
    import math

    from torch import nn


    def build(input_shape, n_outputs, hidden: int = 16):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                             nn.Linear(hidden, n_outputs))
"""


def _user_study(folder: Path, net: str, pack: str, name: str = "packing") -> Path:
    module = f"packnet_{os.getpid()}_{abs(hash((str(folder), pack)))}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(net))
    spec = folder / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: {name}
        data: {{dataset: iris}}
        model: {{factory: {module}:build}}
        search: {{n_trials: 2, seed: 1}}
        cv: {{folds: 3}}
        params: {{lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}, epochs: 2}}
        execution: {{pack_folds: {pack}}}
        tracking: {{report: false, uri: "sqlite:///{folder / 'mlruns' / 'mlflow.db'}"}}
    """))
    return spec


def test_model_reason_names_what_vmap_cannot_run_and_passes_a_plain_model(tmp_path: Path) -> None:
    import importlib.util

    def load(net: str, name: str):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(net))
        mod_spec = importlib.util.spec_from_file_location(f"{name}_{os.getpid()}", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return mod.build

    state = torch.random.get_rng_state()
    bad_build, good_build = load(UNVMAPPABLE, "bad"), load(STACKABLE, "good")
    bad = model_reason(lambda: bad_build((4,), 3), (4,), 3)
    assert bad is not None and bad.startswith("torch.func.vmap cannot run it (") and ".item()" in bad
    assert model_reason(lambda: good_build((4,), 3), (4,), 3) is None
    assert torch.equal(torch.random.get_rng_state(), state)  # trial seeds are not shifted


def test_auto_packs_models_without_convolutions_on_the_cpu(write_spec) -> None:
    def decide(model: str, pack: str, device: str = "cpu") -> tuple[bool, str]:
        spec = load_spec(write_spec(f"name: s\ndata: {{dataset: digits}}\nmodel: {model}\n"
                                    f"search: {{n_trials: 1}}\nexecution: {{pack_folds: {pack}}}\n"))
        return study_packing(spec, (1, 8, 8), 10, device)

    assert decide("mlp", "auto") == (True, "true")
    assert decide("cnn", "auto")[0] is False and "convolutional model on the CPU" in decide("cnn", "auto")[1]
    assert decide("cnn", "auto", device="cuda") == (True, "true")
    assert decide("resnet", "true") == (True, "true")
    assert decide("mlp", "false") == (False, "false: execution.pack_folds is false")


@pytest.mark.slow
def test_a_model_vmap_cannot_run_trains_unpacked_and_the_parent_run_says_why(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    spec = _user_study(folder, UNVMAPPABLE, "auto")
    done = run_cli("run", str(spec), cwd=folder)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("packing").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("hpo.role") == "study")
    trials = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert parent.data.tags["hpo.packed"].startswith("false: torch.func.vmap cannot run it (")
    assert len(trials) == 2 and all(r.data.tags["hpo.state"] == "complete" for r in trials)
    assert all("hpo.packed" not in r.data.tags for r in trials)  # the study did not pack: nothing to say per trial


def test_pack_folds_true_on_such_a_model_is_exit_2_at_validate_and_run_writing_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    spec = _user_study(folder, UNVMAPPABLE, "true")
    for command in ("validate", "run"):
        done = run_cli(command, str(spec), cwd=folder)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert str(spec) in done.stderr and "execution.pack_folds" in done.stderr
        assert "cannot train its folds stacked" in done.stderr and "pack_folds: auto" in done.stderr
    assert not (folder / "mlruns").exists()


@pytest.mark.slow
def test_a_packed_study_records_the_same_trials_as_an_unpacked_one(tmp_path: Path) -> None:
    """iris, the built-in MLP with dropout, 4 TPE trials: every trial's value and fold values are equal
    whether the folds trained packed or not; the parent and every trial run carry ``hpo.packed``."""
    import hpo

    values = {}
    for pack in ("true", "false"):
        folder = tmp_path / pack
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        spec = folder / "spec.yaml"
        spec.write_text(textwrap.dedent(f"""\
            name: iris-pack
            data: {{dataset: iris}}
            model: mlp
            search: {{n_trials: 4, seed: 5}}
            cv: {{folds: 3}}
            params: {{lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}, dropout: {{low: 0.0, high: 0.4}},
                      width: [8, 16], epochs: 8}}
            execution: {{pack_folds: {pack}}}
            tracking: {{report: false, uri: "{uri}"}}
        """))
        hpo.run(spec)
        study = optuna.load_study(study_name="iris-pack", storage=f"sqlite:///{folder / 'optuna.db'}")
        values[pack] = [(t.value, t.user_attrs["fold_values"]) for t in study.trials]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("iris-pack").experiment_id])
        tags = {r.data.tags["hpo.role"]: r.data.tags.get("hpo.packed") for r in runs}
        assert tags == ({"study": "true", "trial": "true"} if pack == "true"
                        else {"study": "false: execution.pack_folds is false", "trial": None})
    assert len(values["true"]) == 4
    for (va, fa), (vb, fb) in zip(values["true"], values["false"], strict=True):
        assert np.allclose(fa, fb, rtol=0, atol=1 / 40 + 1e-12) and va == pytest.approx(vb, abs=1 / 40)
