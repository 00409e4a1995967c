"""An example model factory for hpo: a residual MLP whose width, depth and gating are searched.

hpo calls ``build(input_shape, n_outputs, **model.params)`` and trains what it returns; the
keyword arguments below are the ones ``model.params:`` in ``custom.yaml`` may set.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Block(nn.Module):
    """x + f(x), optionally gated: x + sigmoid(g(x)) * f(x)."""

    def __init__(self, width: int, act: str, gate: bool) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), ACTIVATIONS[act](), nn.Linear(width, width))
        self.g = nn.Linear(width, width) if gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, W) -> (B, W)
        out = self.f(x)
        if self.g is not None:
            out = torch.sigmoid(self.g(x)) * out
        return x + out


class ResidualMLP(nn.Module):
    """(B, *input_shape) -> (B, n_outputs)."""

    def __init__(self, n_in: int, n_outputs: int, hidden: int, blocks: int, act: str, gate: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), ACTIVATIONS[act]())
        self.blocks = nn.Sequential(*[Block(hidden, act, gate) for _ in range(blocks)])
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def build(input_shape: tuple[int, ...], n_outputs: int, hidden: int = 32, blocks: int = 1, gate: bool = False,
          act: Literal["relu", "gelu", "silu"] = "relu") -> nn.Module:
    """The model hpo trains: ``hidden`` units, ``blocks`` residual blocks, optional gates."""
    n_in = 1
    for d in input_shape:
        n_in *= int(d)
    return ResidualMLP(n_in, n_outputs, hidden, blocks, act, gate)
