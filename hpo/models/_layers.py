"""Shared building blocks for the model zoo: activation lookup and input-shape checks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "Dropout", "make_activation"]

#: Activation name -> module class. Every class is constructible with no arguments.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name``.

    Raises:
        ValueError: ``name`` is not a key of :data:`ACTIVATIONS`.
    """
    try:
        cls = ACTIVATIONS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(ACTIVATIONS))
        raise ValueError(f"unknown activation {name!r}; expected one of: {valid}") from None
    return cls()


def check_dropout(dropout: float) -> float:
    """Validate a dropout probability (must lie in ``[0, 1)``) and return it as a float."""
    p = float(dropout)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return p


def check_positive(name: str, value: int, *, allow_zero: bool = False) -> int:
    """Validate an integer size hyperparameter and return it as an int."""
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    low = 0 if allow_zero else 1
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return v


def check_image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` from ``input_shape`` or raise ``ValueError`` for a non-image shape."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ValueError(
            f"model {model!r} needs an image input of shape (C, H, W), got input_shape={shape}; "
            "use model 'mlp' for tabular data"
        )
    if any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive, got {shape}")
    return shape  # type: ignore[return-value]


class Dropout(nn.Dropout):
    """``nn.Dropout`` that draws its masks from ``generator`` when one is set (else torch's global RNG).

    A trial's learner gives each fold model its own generator, so a fold's masks do not depend on
    the other folds, on concurrent trials' threads or on whether the folds train packed: a packed
    trial (:mod:`hpo.packing`) sets ``generators``, one per fold, and under ``torch.func.vmap`` fold j's
    mask is drawn from ``generators[j]``, as it would be unpacked. The generators are not part of the
    model: they are dropped when the model is pickled or copied.
    """

    generator: torch.Generator | None = None
    generators: list[torch.Generator] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        if self.generators is not None:
            level = _vmap_level(x)
            if level is not None:  # x is one fold's batch inside vmap: each fold's own mask, drawn outside it
                from torch._C._functorch import _add_batch_dim

                with torch._C._DisableFuncTorch():  # plain tensors, drawn as an unpacked fold draws them
                    masks = torch.stack([keep_mask(torch.empty(x.shape, dtype=x.dtype, device=x.device), self.p, g)
                                         for g in self.generators])  # (k, *x.shape)
                return x * _add_batch_dim(masks, 0, level)
        if self.generator is None:
            return super().forward(x)
        return x * keep_mask(x, self.p, self.generator)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("generator", None)
        state.pop("generators", None)
        return state


def _vmap_level(x: torch.Tensor) -> int | None:
    """The ``torch.func.vmap`` level ``x`` is batched at, or ``None`` (torch's private functorch API, pinned
    with torch: without it, masks come from the global RNG and packed dropout is equal in law only)."""
    try:
        from torch._C._functorch import is_batchedtensor, maybe_get_level
    except ImportError:
        return None
    return maybe_get_level(x) if is_batchedtensor(x) else None


def keep_mask(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Dropout's scaled keep-mask for ``x``: 0 with probability ``p``, else ``1 / (1 - p)``."""
    return torch.empty_like(x).bernoulli_(1 - p, generator=generator).div_(1 - p)
