"""Multi-layer perceptron for tabular (or flattened image) inputs."""

from __future__ import annotations

import math

import torch
from torch import nn

from hpo.models._layers import Dropout, check_dropout, check_positive, make_activation

__all__ = ["MLP", "build"]


class MLP(nn.Module):
    """Fully connected network: ``depth`` hidden blocks then a linear head.

    Each hidden block is ``Linear -> [BatchNorm1d] -> activation -> Dropout``. The input is
    flattened, so both ``(B, F)`` and ``(B, C, H, W)`` batches are accepted. ``depth=0`` gives
    a plain linear model.

    Args:
        input_shape: shape of one example without the batch dimension.
        n_outputs: size of the output layer (classes, or targets for regression).
        depth: number of hidden layers (>= 0).
        width: units per hidden layer (>= 1).
        activation: a key of :data:`hpo.models.ACTIVATIONS`.
        dropout: dropout probability after each hidden activation, in ``[0, 1)``.
        batch_norm: insert ``BatchNorm1d`` after each hidden ``Linear``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        *,
        depth: int = 2,
        width: int = 128,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(input_shape) == 0:
            raise ValueError("input_shape must have at least one dimension")
        in_features = math.prod(int(s) for s in input_shape)
        check_positive("input size", in_features)
        depth = check_positive("depth", depth, allow_zero=True)
        width = check_positive("width", width)
        n_outputs = check_positive("n_outputs", n_outputs)
        dropout = check_dropout(dropout)

        self.input_shape = tuple(int(s) for s in input_shape)
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(depth):
            layers.append(nn.Linear(features, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(Dropout(dropout))
            features = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, *input_shape)`` to ``(B, n_outputs)``."""
        x = self.flatten(x)  # (B, F)
        x = self.body(x)  # (B, width), or (B, F) when depth == 0
        return self.head(x)  # (B, n_outputs)


def build(input_shape: tuple[int, ...], n_outputs: int, *, depth: int = 2, width: int = 128, activation: str = "relu",
          dropout: float = 0.0, batch_norm: bool = False) -> MLP:
    """The ``mlp`` model factory (entry point ``hpo.models: mlp``): an :class:`MLP`; defaults as in a spec."""
    return MLP(input_shape, n_outputs, depth=depth, width=width, activation=activation, dropout=dropout,
               batch_norm=bool(batch_norm))
