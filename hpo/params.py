"""The hyperparameters every objective understands: type, default, allowed values.

This is the one place where defaults live. ``spec.py`` validates user values against
these rules and ``space.py`` fills in the defaults of parameters a spec leaves out.
No torch import here: validating a spec must stay instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "elu", "gelu", "softplus")
SCHEDULERS = ("constant", "step", "cosine", "onecycle", "plateau", "cyclic", "sgdr")
PER_BATCH_SCHEDULERS = ("onecycle", "cyclic", "sgdr")  # stepped after every batch, the others after every epoch
MODELS = ("mlp", "cnn", "resnet")
# the cost functions of each task: the first is the task's default (hpo.losses holds their torch forms)
LOSSES: dict[str, tuple[str, ...]] = {"classification": ("cross_entropy", "hinge"), "regression": ("mse", "l1", "huber")}
ALL_LOSSES = LOSSES["classification"] + LOSSES["regression"]
# weight initialisation of the built-in models' linear and conv layers (hpo.models.init); default = PyTorch's own
INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "orthogonal")
RESNET_DEPTHS = (20, 32, 44, 56, 110)
# the built-in networks' own keywords: a model factory takes its own (``model.params:``) instead
ARCHITECTURE_PARAMS = ("depth", "width", "activation", "batch_norm", "dropout", "init")

# Architecture defaults differ per model; everything else is shared.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"depth": 2, "width": 128, "batch_norm": False},
    "cnn": {"depth": 2, "width": 32, "batch_norm": True},
    "resnet": {"depth": 20, "width": 16, "batch_norm": True},
}


@dataclass(frozen=True)
class ParamInfo:
    """What one known hyperparameter accepts.

    ``kind`` is ``float``, ``int``, ``bool`` or ``str``; ``rule`` returns an error text
    for a bad value or ``None``; ``doc`` is what the README and ``hpo validate`` show.
    """

    kind: str
    default: Any
    doc: str
    rule: Callable[[Any], str | None] = lambda v: None
    choices: tuple[Any, ...] = ()


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    def check(v: Any) -> str | None:
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    return check


def _one_of(options: tuple[str, ...]):
    def check(v: Any) -> str | None:
        return None if v in options else f"must be one of {', '.join(options)}"

    return check


PARAMS: dict[str, ParamInfo] = {
    "lr": ParamInfo("float", 1e-3, "learning rate (peak rate for onecycle)", _range(0, lo_open=True)),
    "batch_size": ParamInfo("int", 64, "examples per optimisation step", _range(1)),
    "epochs": ParamInfo("int", 10, "passes over each fold's training part (upper bound with patience)", _range(1)),
    "optimizer": ParamInfo("str", "adam", "torch.optim algorithm", _one_of(OPTIMIZERS), OPTIMIZERS),
    "momentum": ParamInfo("float", 0.9, "momentum of sgd and rmsprop (ignored by the others)", _range(0, 1)),
    "nesterov": ParamInfo("bool", False, "Nesterov momentum for sgd"),
    "weight_decay": ParamInfo("float", 0.0, "L2 penalty (decoupled for adamw)", _range(0)),
    "dropout": ParamInfo("float", 0.0, "dropout probability before each hidden/head layer", _range(0, 1, hi_open=True)),
    "depth": ParamInfo(
        "int", None, "mlp: hidden layers; cnn: conv blocks; resnet: total layers 6n+2 (20, 32, 44, 56, 110)", _range(0)
    ),
    "width": ParamInfo("int", None, "mlp: units per layer; cnn: first block's channels; resnet: base width", _range(1)),
    "activation": ParamInfo("str", "relu", "non-linearity of every hidden layer", _one_of(ACTIVATIONS), ACTIVATIONS),
    "batch_norm": ParamInfo("bool", None, "batch normalisation after each hidden layer (always on for resnet)"),
    "scheduler": ParamInfo("str", "constant", "learning-rate schedule over the epochs", _one_of(SCHEDULERS), SCHEDULERS),
    "cyclic_ratio": ParamInfo("float", 10.0, "cyclic: the rate cycles between lr / cyclic_ratio and lr", _range(1)),
    "cycle_epochs": ParamInfo("int", 4, "cyclic: epochs per triangular cycle (up for half, down for half)", _range(1)),
    "restart_epochs": ParamInfo("int", 10, "sgdr: epochs to the first warm restart of the cosine annealing", _range(1)),
    "restart_mult": ParamInfo("int", 1, "sgdr: each period is this many times the last", _range(1)),
    "loss": ParamInfo("str", None, "cost function: classification cross_entropy (default) or hinge (multi-class "
                      "margin); regression mse (default), l1 or huber", _one_of(ALL_LOSSES), ALL_LOSSES),
    "init": ParamInfo("str", "default", "weight init of the built-in models' linear and conv layers (biases to 0); "
                      "default keeps PyTorch's", _one_of(INITS), INITS),
    "label_smoothing": ParamInfo("float", 0.0, "cross-entropy label smoothing (classification)", _range(0, 1, hi_open=True)),
    "grad_clip": ParamInfo("float", 0.0, "max gradient L2 norm; 0 = no clipping", _range(0)),
    "patience": ParamInfo("int", 0, "early stop after this many epochs without improvement of the fold mean; 0 = off", _range(0)),
    "augment": ParamInfo("bool", False, "images only: random crop (pad 1/8 of the side) + horizontal flip for 3-channel images"),
}


def default_value(name: str, model: str, task: str | None = None) -> Any:
    """Return the default of parameter ``name`` for ``model`` on ``task``: ``loss`` is the task's first
    (without a task, ``None``: the learner takes its data's task's)."""
    defaults = MODEL_DEFAULTS.get(model, {})
    if name in defaults:
        return defaults[name]
    if name == "loss":
        return LOSSES[task][0] if task else None
    return PARAMS[name].default


def param_names(model: str) -> tuple[str, ...]:
    """The known parameters a trial of ``model`` trains with: all of :data:`PARAMS` for a built-in model;
    for a model factory (any other name) the training ones, without :data:`ARCHITECTURE_PARAMS`."""
    if model in MODELS:
        return tuple(PARAMS)
    return tuple(n for n in PARAMS if n not in ARCHITECTURE_PARAMS)


def check_value(name: str, value: Any, model: str) -> str | None:
    """Return why ``value`` is not valid for parameter ``name`` under ``model``, or ``None``."""
    info = PARAMS[name]
    if info.kind == "bool":
        if not isinstance(value, bool):
            return f"must be true or false (got {value!r})"
    elif info.kind == "str":
        if not isinstance(value, str):
            return f"must be a string (got {value!r})"
    elif info.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer (got {value!r})"
    elif info.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number (got {value!r})"
        if not math.isfinite(value):
            return f"must be a finite number (got {value!r})"
    problem = info.rule(value)
    if problem is None and name == "depth" and model == "resnet" and value not in RESNET_DEPTHS:
        problem = f"must be one of {', '.join(map(str, RESNET_DEPTHS))} for resnet (6n+2)"
    if problem is None:
        return None
    hint = ""
    if info.choices and isinstance(value, str):
        import difflib

        close = difflib.get_close_matches(value, info.choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{problem} (got {value!r}){hint}"
