"""Tests for hpo.models: shapes, parameter counts, options, training signal, pickling."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from hpo.models import (
    ACTIVATIONS,
    CNN,
    MLP,
    MODELS,
    RESNET_DEPTHS,
    ResNet,
    build_model,
    count_parameters,
)

torch.set_num_threads(2)

TABULAR = (64,)
IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
ALL_SHAPES = [TABULAR, *IMAGE_SHAPES]


def params(**overrides):
    base = {"depth": 2, "width": 8, "activation": "relu", "dropout": 0.0, "batch_norm": False}
    base.update(overrides)
    return base


def default_params(name: str, **overrides):
    """Small but valid hyperparameters for each model."""
    if name == "resnet":
        return params(**{"depth": 20, "width": 4, "batch_norm": True, **overrides})
    return params(**overrides)


def allowed(name: str, shape: tuple[int, ...]) -> bool:
    return name == "mlp" or len(shape) == 3


CASES = [(n, s) for n in MODELS for s in ALL_SHAPES if allowed(n, s)]


# ---------------------------------------------------------------- registry / API


def test_public_api():
    assert MODELS == ("mlp", "cnn", "resnet")
    assert RESNET_DEPTHS == (20, 32, 44, 56, 110)
    assert set(ACTIVATIONS) == {"relu", "tanh", "sigmoid", "leaky_relu", "elu", "gelu", "softplus"}
    assert all(issubclass(cls, nn.Module) for cls in ACTIVATIONS.values())


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*mlp, cnn, resnet"):
        build_model("vgg", input_shape=(3, 32, 32), n_outputs=10, params=params())


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        build_model("mlp", input_shape=TABULAR, n_outputs=2, params=params(activation="swishy"))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(TABULAR, 2, activation="swishy")


def test_missing_param_is_clear():
    p = params()
    del p["dropout"]
    with pytest.raises(ValueError, match="dropout"):
        build_model("mlp", input_shape=TABULAR, n_outputs=2, params=p)


def test_extra_params_ignored():
    model = build_model("mlp", input_shape=TABULAR, n_outputs=3, params=params(lr=0.1, optimizer="adam"))
    assert model(torch.randn(2, 64)).shape == (2, 3)


@pytest.mark.parametrize("bad", [{"dropout": 1.0}, {"dropout": -0.1}, {"width": 0}, {"depth": -1}])
def test_out_of_range_values(bad):
    with pytest.raises(ValueError):
        build_model("mlp", input_shape=TABULAR, n_outputs=2, params=params(**bad))


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_output_shape(name, shape):
    model = build_model(name, input_shape=shape, n_outputs=5, params=default_params(name))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, *shape))
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["cnn", "resnet"])
def test_image_models_reject_tabular(name):
    with pytest.raises(ValueError, match="use model 'mlp'"):
        build_model(name, input_shape=TABULAR, n_outputs=2, params=default_params(name))


def test_mlp_accepts_image_batches_and_depth_zero():
    model = build_model("mlp", input_shape=(1, 8, 8), n_outputs=4, params=params(depth=0))
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [nn.Linear]
    assert count_parameters(model) == 64 * 4 + 4
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_cnn_deep_on_small_input_skips_pooling():
    model = build_model("cnn", input_shape=(1, 8, 8), n_outputs=3, params=params(depth=4))
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, fourth block keeps 1x1
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    # channels double every block
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]


def test_cnn_non_square_input():
    model = CNN((2, 1, 16), 3, depth=3, width=4)
    assert model(torch.randn(2, 2, 1, 16)).shape == (2, 3)


# ---------------------------------------------------------------- ResNet


def test_resnet20_param_count():
    model = build_model(
        "resnet",
        input_shape=(3, 32, 32),
        n_outputs=10,
        params=params(depth=20, width=16, batch_norm=True),
    )
    # He et al. 2016 report ~0.27M for ResNet-20 (option A, parameter-free shortcuts).
    assert count_parameters(model) == 269_722
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())
    # Option B adds two 1x1 conv + BN projections: 16*32 + 64 + 32*64 + 128.
    assert count_parameters(ResNet((3, 32, 32), 10, depth=20, width=16, shortcut="B")) == 272_474


@pytest.mark.parametrize("depth", RESNET_DEPTHS)
def test_every_resnet_depth_builds(depth):
    model = build_model("resnet", input_shape=(1, 8, 8), n_outputs=2, params=params(depth=depth, width=2))
    n = (depth - 2) // 6
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 6 * n  # stem + 2 per block; + head = depth weighted layers
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 2)


@pytest.mark.parametrize("depth", [18, 21, 0])
def test_bad_resnet_depth(depth):
    with pytest.raises(ValueError, match="20, 32, 44, 56, 110"):
        build_model("resnet", input_shape=(3, 32, 32), n_outputs=10, params=params(depth=depth))


def test_resnet_stage_shapes_and_init():
    model = ResNet((3, 32, 32), 10, depth=20, width=16)
    x = torch.randn(2, 3, 32, 32)
    x = model.stem(x)
    assert x.shape == (2, 16, 32, 32)
    x = model.stage1(x)
    assert x.shape == (2, 16, 32, 32)
    x = model.stage2(x)
    assert x.shape == (2, 32, 16, 16)
    x = model.stage3(x)
    assert x.shape == (2, 64, 8, 8)
    conv = model.stem[0]
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5  # kaiming normal, fan_out
    assert abs(conv.weight.std().item() - expected_std) < 0.35 * expected_std


def test_resnet_always_batch_norm_and_option_b_runs():
    model = build_model(
        "resnet", input_shape=(1, 8, 8), n_outputs=2, params=params(depth=20, batch_norm=False)
    )
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model_b = ResNet((1, 28, 28), 3, width=4, shortcut="B")
    assert model_b(torch.randn(2, 1, 28, 28)).shape == (2, 3)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("name", MODELS)
def test_every_activation(name, activation):
    shape = TABULAR if name == "mlp" else (1, 8, 8)
    p = default_params(name, activation=activation)
    if name == "resnet":
        p["width"] = 2
    model = build_model(name, input_shape=shape, n_outputs=3, params=p)
    assert any(isinstance(m, ACTIVATIONS[activation]) for m in model.modules())
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 3)
    out.sum().backward()


@pytest.mark.parametrize("name", MODELS)
def test_dropout_changes_structure(name):
    shape = TABULAR if name == "mlp" else (1, 8, 8)
    without = build_model(name, input_shape=shape, n_outputs=2, params=default_params(name, dropout=0.0))
    with_ = build_model(name, input_shape=shape, n_outputs=2, params=default_params(name, dropout=0.3))
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())
    drops = [m for m in with_.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(d.p == 0.3 for d in drops)
    if name == "mlp":
        assert len(drops) == 2  # one per hidden layer


@pytest.mark.parametrize(("name", "bn_cls"), [("mlp", nn.BatchNorm1d), ("cnn", nn.BatchNorm2d)])
def test_batch_norm_changes_structure(name, bn_cls):
    shape = TABULAR if name == "mlp" else (1, 8, 8)
    off = build_model(name, input_shape=shape, n_outputs=2, params=params(batch_norm=False))
    on = build_model(name, input_shape=shape, n_outputs=2, params=params(batch_norm=True))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in off.modules())
    assert sum(isinstance(m, bn_cls) for m in on.modules()) == 2


# ---------------------------------------------------------------- memory format / autocast


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_and_bf16_autocast(name):
    shape = (3, 16, 16)
    model = build_model(name, input_shape=shape, n_outputs=4, params=default_params(name, batch_norm=True))
    model = model.to(memory_format=torch.channels_last).eval()
    x = torch.randn(2, *shape).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert ref.shape == out.shape == (2, 4)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, atol=0.1, rtol=0.1)


# ---------------------------------------------------------------- learning signal


def _learnable_problem(shape, n_classes=2, n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = (x.flatten(1).mean(dim=1) > 0).long()  # depends on the mean value: easy for every model
    return x, y


@pytest.mark.parametrize(
    ("name", "shape"), [("mlp", TABULAR), ("mlp", (1, 8, 8)), ("cnn", (1, 8, 8)), ("resnet", (1, 8, 8))]
)
def test_sgd_lowers_loss(name, shape):
    torch.manual_seed(0)
    x, y = _learnable_problem(shape)
    p = default_params(name, batch_norm=True)
    model = build_model(name, input_shape=shape, n_outputs=2, params=p)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.eval()
    with torch.no_grad():
        before = loss_fn(model(x), y).item()
    model.train()
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = loss_fn(model(x), y).item()
    assert after < 0.8 * before, (before, after)


# ---------------------------------------------------------------- pickling


@pytest.mark.parametrize("name", MODELS)
def test_pickle_round_trip(name):
    shape = TABULAR if name == "mlp" else (1, 8, 8)
    model = build_model(name, input_shape=shape, n_outputs=3, params=default_params(name, dropout=0.2))
    model.eval()
    x = torch.randn(2, *shape)
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is type(model)
    assert type(clone).__module__.startswith("hpo.models.")
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_count_parameters_skips_frozen():
    model = MLP(TABULAR, 2, depth=1, width=4)
    total = count_parameters(model)
    assert total == 64 * 4 + 4 + 4 * 2 + 2
    model.head.requires_grad_(False)
    assert count_parameters(model) == total - 10
