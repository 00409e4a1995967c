"""Model zoo: an MLP, a plain CNN and a CIFAR ResNet, built by name from a hyperparameter mapping.

Every model is a plain top-level :class:`torch.nn.Module` subclass (picklable, importable by
module path) that maps a batch ``(B, *input_shape)`` to ``(B, n_outputs)`` logits/predictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from hpo.models._layers import ACTIVATIONS
from hpo.models.cnn import CNN
from hpo.models.mlp import MLP
from hpo.models.resnet import RESNET_DEPTHS, ResNet

__all__ = [
    "ACTIVATIONS",
    "CNN",
    "MLP",
    "MODELS",
    "RESNET_DEPTHS",
    "ResNet",
    "build_model",
    "count_parameters",
]

#: Names accepted by :func:`build_model`.
MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet")

_REQUIRED_PARAMS = ("depth", "width", "activation", "dropout", "batch_norm")


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    n_outputs: int,
    params: Mapping[str, Any],
) -> nn.Module:
    """Build model ``name`` for examples of shape ``input_shape`` with ``n_outputs`` outputs.

    Args:
        name: one of :data:`MODELS`.
        input_shape: shape of one example without the batch dim: ``(F,)`` or ``(C, H, W)``.
        n_outputs: number of outputs (classes, or regression targets).
        params: hyperparameters ``depth``, ``width``, ``activation``, ``dropout``, ``batch_norm``;
            other keys are ignored. For ``resnet``, ``depth`` is the total depth (one of
            :data:`RESNET_DEPTHS`), ``width`` the stage-1 channels, and ``batch_norm`` is ignored
            (always on).

    Raises:
        ValueError: unknown model or activation, missing parameter, bad ResNet depth, an image
            model given a tabular shape, or an out-of-range value.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}")
    missing = [k for k in _REQUIRED_PARAMS if k not in params]
    if missing:
        raise ValueError(f"model {name!r} is missing hyperparameter(s): {', '.join(missing)}")
    activation = params["activation"]
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of: {', '.join(ACTIVATIONS)}")
    shape = tuple(int(s) for s in input_shape)
    common: dict[str, Any] = {
        "depth": params["depth"],
        "width": params["width"],
        "activation": activation,
        "dropout": params["dropout"],
    }
    if name == "mlp":
        return MLP(shape, n_outputs, batch_norm=bool(params["batch_norm"]), **common)
    if name == "cnn":
        return CNN(shape, n_outputs, batch_norm=bool(params["batch_norm"]), **common)
    return ResNet(shape, n_outputs, **common)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
