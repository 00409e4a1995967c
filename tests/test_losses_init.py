"""The loss and the initialisation as hyperparameters: each loss is torch's own and trains on its
task (and only there), and each init draws the weights it names while ``default`` leaves the
built-in models exactly as they were."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from sklearn.datasets import load_diabetes, load_iris
from torch import nn

import hpo
from hpo.losses import loss_function
from hpo.models import build_model, cnn, mlp, resnet
from hpo.params import INITS, LOSSES, PARAMS, default_value
from hpo.training import Data, Learner
from tests._layout import assert_layout


def _params(model: str = "mlp", **overrides):
    params = {name: default_value(name, model) for name in PARAMS}
    params.update(overrides)
    return params


def _learner(regression: bool, **overrides):
    if regression:
        x, y = load_diabetes(return_X_y=True)
        data = Data.from_arrays(x.astype(np.float32), y.astype(np.float32), 0, "cpu")
    else:
        x, y = load_iris(return_X_y=True)
        data = Data.from_arrays(x.astype(np.float32), y, 3, "cpu")
    params = _params(depth=1, width=16, batch_size=32, lr=0.01, **overrides)
    return Learner(data, torch.arange(len(y)), "mlp", params, seed=0, direction="maximize", epochs=8)


TORCH_LOSSES = {
    "cross_entropy": (nn.CrossEntropyLoss(), False),
    "hinge": (nn.MultiMarginLoss(), False),
    "mse": (nn.MSELoss(), True),
    "l1": (nn.L1Loss(), True),
    "huber": (nn.HuberLoss(), True),
}


@pytest.mark.parametrize("name", list(TORCH_LOSSES))
def test_each_loss_is_torchs_own_and_lowers_the_training_loss(name):
    module, regression = TORCH_LOSSES[name]
    learner = _learner(regression, loss=name)
    gen = torch.Generator().manual_seed(1)
    out = torch.randn(8, 1 if regression else 3, generator=gen)
    target = torch.randn(8, generator=gen) if regression else torch.randint(0, 3, (8,), generator=gen)
    got = learner.loss_fn(out.squeeze(-1) if regression else out, target)
    assert torch.equal(got, module(out.squeeze(-1) if regression else out, target))
    losses = [learner.train_epoch() for _ in range(8)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], f"{name}: {losses}"


def test_label_smoothing_reaches_cross_entropy_and_no_other_loss():
    smooth = loss_function({"loss": "cross_entropy", "label_smoothing": 0.2}, regression=False)
    plain = loss_function({"loss": "cross_entropy", "label_smoothing": 0.0}, regression=False)
    out, y = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0])
    assert float(smooth(out, y)) > float(plain(out, y))
    hinge = loss_function({"loss": "hinge", "label_smoothing": 0.2}, regression=False)
    assert torch.equal(hinge(out, y), nn.MultiMarginLoss()(out, y))


@pytest.mark.parametrize(("loss", "regression"), [("hinge", True), ("mse", False), ("huber", False)])
def test_a_loss_of_the_other_task_is_refused_by_the_trainer_too(loss, regression):
    with pytest.raises(ValueError, match=f"loss '{loss}' does not fit a"):
        loss_function({"loss": loss}, regression=regression)


def test_every_loss_has_a_task_and_the_default_is_the_tasks_first():
    assert set(PARAMS["loss"].choices) == set(LOSSES["classification"]) | set(LOSSES["regression"])
    assert default_value("loss", "mlp", "classification") == "cross_entropy"
    assert default_value("loss", "cnn", "regression") == "mse"


STUDY = """
name: {name}
data: {{dataset: {dataset}}}
model: mlp
search: {{sampler: grid, seed: 0}}
cv: {{folds: 2}}
params: {{lr: 0.02, epochs: 3, width: 16, loss: {losses}, init: {init}}}
tracking: {{report: false}}
"""


@pytest.mark.parametrize(("dataset", "task"), [("iris", "classification"), ("diabetes", "regression")])
def test_each_loss_of_a_task_trains_a_study_and_refits(write_spec, store, dataset, task):
    losses = list(LOSSES[task])
    path = write_spec(STUDY.format(name=f"loss-{task}", dataset=dataset, losses=losses, init="kaiming_uniform"))
    result = hpo.run(path, tracking_uri=store)
    spec = hpo.load_spec(path).replace(tracking_uri=store)
    client = MlflowClient(store)
    assert_layout(client, result, spec)
    runs = [r for r in client.search_runs([client.get_experiment_by_name(spec.experiment).experiment_id])
            if r.data.tags.get("hpo.role") == "trial"]
    assert sorted(r.data.params["loss"] for r in runs) == sorted(losses)
    assert all(r.data.tags["hpo.state"] == "complete" and r.data.params["init"] == "kaiming_uniform" for r in runs)
    assert result.test_metrics and all(math.isfinite(v) for v in result.test_metrics.values())
    parent = client.get_run(result.parent_run_id).data
    assert parent.tags["hpo.best.loss"] in losses


# --------------------------------------------------------------------------- init

BUILDS = {
    "mlp": (mlp.build, (10,), {"depth": 2, "width": 64, "activation": "relu", "dropout": 0.0, "batch_norm": True}),
    "cnn": (cnn.build, (1, 8, 8), {"depth": 2, "width": 8, "activation": "relu", "dropout": 0.0, "batch_norm": True}),
    "resnet": (resnet.build, (3, 8, 8), {"depth": 20, "width": 4, "activation": "relu", "dropout": 0.0,
                                         "batch_norm": True}),
}


def _build(model: str, init: str | None, seed: int = 0) -> nn.Module:
    _fn, shape, kw = BUILDS[model]
    params = {**kw} if init is None else {**kw, "init": init}
    torch.manual_seed(seed)
    return build_model(model, input_shape=shape, n_outputs=3, params=params)


@pytest.mark.parametrize("model", list(BUILDS))
def test_default_init_is_the_factorys_own_bit_for_bit(model):
    fn, shape, kw = BUILDS[model]
    torch.manual_seed(0)
    plain = fn(shape, 3, **{k: v for k, v in kw.items() if k in inspect.signature(fn).parameters}).state_dict()
    for got in (_build(model, "default").state_dict(), _build(model, None).state_dict()):
        assert list(got) == list(plain)
        assert all(torch.equal(got[k], plain[k]) for k in plain)


def _layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@pytest.mark.parametrize("model", list(BUILDS))
@pytest.mark.parametrize("init", [i for i in INITS if i != "default"])
def test_each_init_redraws_every_linear_and_conv_weight_and_zeroes_biases(model, init):
    before, after = _build(model, "default"), _build(model, init)
    assert [k for k, _ in before.named_parameters()] == [k for k, _ in after.named_parameters()]
    for a, b in zip(_layers(before), _layers(after), strict=True):
        assert not torch.equal(a.weight, b.weight)
        if b.bias is not None:
            assert torch.count_nonzero(b.bias) == 0
    for m in after.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    again = _build(model, init)
    assert all(torch.equal(x, y) for x, y in zip(after.state_dict().values(), again.state_dict().values(), strict=True))


def _big_linear(init: str, activation: str = "relu") -> torch.Tensor:
    torch.manual_seed(0)
    net = build_model("mlp", input_shape=(400,), n_outputs=3, params={
        "depth": 1, "width": 300, "activation": activation, "dropout": 0.0, "batch_norm": False, "init": init})
    return _layers(net)[0].weight.detach()  # (300, 400): fan_in 400, fan_out 300


@pytest.mark.parametrize(("init", "std", "bound"), [
    ("kaiming_normal", math.sqrt(2 / 400), None),
    ("kaiming_uniform", math.sqrt(2 / 400), math.sqrt(6 / 400)),
    ("xavier_uniform", math.sqrt(2 / 700), math.sqrt(6 / 700)),
])
def test_the_scale_of_each_init_is_the_one_it_names(init, std, bound):
    w = _big_linear(init)
    assert float(w.std()) == pytest.approx(std, rel=0.02)
    assert abs(float(w.mean())) < 0.05 * std
    if bound is not None:
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound


def test_orthogonal_init_has_orthonormal_rows():
    w = _big_linear("orthogonal").double()
    assert torch.allclose(w @ w.T, torch.eye(300, dtype=torch.float64), atol=1e-5)


def test_kaiming_takes_the_gain_of_the_models_activation():
    assert float(_big_linear("kaiming_normal", "tanh").std()) == pytest.approx(5 / 3 / math.sqrt(400), rel=0.02)
    assert float(_big_linear("kaiming_normal", "gelu").std()) == pytest.approx(math.sqrt(2 / 400), rel=0.02)
