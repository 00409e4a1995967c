"""CIFAR-style ResNet (He et al., "Deep Residual Learning for Image Recognition", 2016, sec. 4.2)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hpo.models._layers import Dropout, check_dropout, check_image_shape, check_positive, make_activation

__all__ = ["RESNET_DEPTHS", "BasicBlock", "PadShortcut", "ResNet", "build"]

#: Valid total depths ``6n + 2`` (n = 3, 5, 7, 9, 18 basic blocks per stage).
RESNET_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110)

Shortcut = Literal["A", "B"]


class PadShortcut(nn.Module):
    """Parameter-free shortcut (option A): subsample spatially, zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option-A shortcut cannot reduce channels")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C_in, ceil(H/s), ceil(W/s))
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # (B, C_out, ceil(H/s), ceil(W/s))


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection: ``act(bn2(conv2(act(bn1(conv1 x)))) + sc(x))``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        activation: str = "relu",
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, C_out, H/s, W/s)
        return self.act2(out + self.shortcut(x))  # (B, C_out, H/s, W/s)


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2): 3x3 stem, three stages of ``n`` basic blocks, GAP, dropout, linear head.

    Stage widths are ``width, 2*width, 4*width``; stages 2 and 3 start with stride 2. Batch norm is
    always used. Convolutions get Kaiming-normal init (fan-out, ReLU gain); BN starts at (1, 0).

    With ``depth=20, width=16`` and 10 outputs the model has 269,722 parameters with the paper's
    option-A shortcuts (the default) and 272,474 with option-B projection shortcuts.

    Args:
        input_shape: ``(C, H, W)`` of one example. Any ``H, W >= 1`` works (8x8, 28x28, 32x32...).
        n_outputs: size of the output layer.
        depth: total depth, one of :data:`RESNET_DEPTHS`.
        width: channels of the stem and of stage 1 (16 in the paper).
        activation: a key of :data:`hpo.models.ACTIVATIONS`.
        dropout: dropout probability before the head, in ``[0, 1)``.
        shortcut: ``"A"`` (zero-padding identity, parameter-free, as in the paper's CIFAR runs) or
            ``"B"`` (1x1 conv + BN projection where the shape changes).

    Raises:
        ValueError: bad depth, non-image ``input_shape`` or an out-of-range hyperparameter.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_outputs: int,
        *,
        depth: int = 20,
        width: int = 16,
        activation: str = "relu",
        dropout: float = 0.0,
        shortcut: Shortcut = "A",
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or depth not in RESNET_DEPTHS:
            valid = ", ".join(str(d) for d in RESNET_DEPTHS)
            raise ValueError(f"resnet depth must be one of {valid} (6n+2), got {depth!r}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"resnet shortcut must be 'A' or 'B', got {shortcut!r}")
        channels, height, width_px = check_image_shape(input_shape, "resnet")
        width = check_positive("width", width)
        n_outputs = check_positive("n_outputs", n_outputs)
        dropout = check_dropout(dropout)

        self.input_shape = (channels, height, width_px)
        n = (int(depth) - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            make_activation(activation),
        )
        stages: list[nn.Module] = []
        in_ch = width
        for stage, stride in enumerate((1, 2, 2)):
            out_ch = width * 2**stage
            blocks = []
            for b in range(n):
                blocks.append(
                    BasicBlock(
                        in_ch,
                        out_ch,
                        stride if b == 0 else 1,
                        activation=activation,
                        shortcut=shortcut,
                    )
                )
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_ch, n_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch ``(B, C, H, W)`` to ``(B, n_outputs)``."""
        x = self.stem(x)  # (B, w, H, W)
        x = self.stage1(x)  # (B, w, H, W)
        x = self.stage2(x)  # (B, 2w, ceil(H/2), ceil(W/2))
        x = self.stage3(x)  # (B, 4w, ceil(H/4), ceil(W/4))
        x = self.pool(x)  # (B, 4w, 1, 1)
        x = self.flatten(x)  # (B, 4w)
        x = self.dropout(x)  # (B, 4w)
        return self.head(x)  # (B, n_outputs)


def build(input_shape: tuple[int, ...], n_outputs: int, *, depth: int = 20, width: int = 16, activation: str = "relu",
          dropout: float = 0.0) -> ResNet:
    """The ``resnet`` model factory (entry point ``hpo.models: resnet``): a :class:`ResNet` (batch norm always on)."""
    return ResNet(input_shape, n_outputs, depth=depth, width=width, activation=activation, dropout=dropout)
