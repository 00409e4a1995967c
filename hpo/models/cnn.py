"""Plain VGG-style convolutional network for image inputs."""

from __future__ import annotations

import torch
from torch import nn

from hpo.models._layers import Dropout, check_dropout, check_image_shape, check_positive, make_activation

__all__ = ["CNN", "build"]


class CNN(nn.Module):
    """Stack of conv blocks, global average pooling and a linear head.

    Block ``i`` (0-based) is ``Conv2d(3x3, padding=1) -> [BatchNorm2d] -> activation -> MaxPool2d(2)``
    with ``width * 2**i`` output channels. The pool is skipped along any spatial dimension that is
    already smaller than 2 (and dropped entirely when both are), so small inputs such as ``8x8``
    work with any depth. After the blocks: global average pooling, ``Dropout``, ``Linear``.

    Args:
        input_shape: ``(C, H, W)`` of one example. Tabular ``(F,)`` shapes are rejected.
        n_outputs: size of the output layer.
        depth: number of conv blocks (>= 1).
        width: output channels of the first block (>= 1); doubles each block.
        activation: a key of :data:`hpo.models.ACTIVATIONS`.
        dropout: dropout probability before the head, in ``[0, 1)``.
        batch_norm: insert ``BatchNorm2d`` after each convolution.

    Raises:
        ValueError: ``input_shape`` is not ``(C, H, W)`` or a hyperparameter is out of range.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        *,
        depth: int = 3,
        width: int = 32,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        channels, height, width_px = check_image_shape(input_shape, "cnn")
        depth = check_positive("depth", depth)
        width = check_positive("width", width)
        n_outputs = check_positive("n_outputs", n_outputs)
        dropout = check_dropout(dropout)

        self.input_shape = (channels, height, width_px)
        blocks: list[nn.Module] = []
        in_ch, h, w = channels, height, width_px
        for i in range(depth):
            out_ch = width * 2**i
            block: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=not batch_norm)]
            if batch_norm:
                block.append(nn.BatchNorm2d(out_ch))
            block.append(make_activation(activation))
            kh, kw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
            if (kh, kw) != (1, 1):
                block.append(nn.MaxPool2d(kernel_size=(kh, kw)))
                h, w = h // kh, w // kw
            blocks.append(nn.Sequential(*block))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_ch, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, C, H, W)`` to ``(B, n_outputs)``."""
        x = self.features(x)  # (B, width * 2**(depth-1), H', W'), H' = H / 2**(pooled blocks)
        x = self.pool(x)  # (B, C', 1, 1)
        x = self.flatten(x)  # (B, C')
        x = self.dropout(x)  # (B, C')
        return self.head(x)  # (B, n_outputs)


def build(input_shape: tuple[int, ...], n_outputs: int, *, depth: int = 2, width: int = 32, activation: str = "relu",
          dropout: float = 0.0, batch_norm: bool = True) -> CNN:
    """The ``cnn`` model factory (entry point ``hpo.models: cnn``): a :class:`CNN`; defaults as in a spec."""
    return CNN(input_shape, n_outputs, depth=depth, width=width, activation=activation, dropout=dropout,
               batch_norm=bool(batch_norm))
