"""The cost functions a trial trains with: the ``loss`` hyperparameter in torch's functional form.

Classification takes logits ``(B, C)`` and class labels; regression takes predictions ``(B,)`` and
targets (standardised by the learner, so ``huber``'s threshold of 1 is one standard deviation of the
fold's targets). The same function serves a fold trained alone (``reduction="mean"``) and folds
trained stacked (``reduction="none"``, averaged per fold by :mod:`hpo.packing`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from hpo.params import LOSSES

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "hinge": F.multi_margin_loss,  # Crammer-Singer-style multi-class margin, torch.nn.MultiMarginLoss
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "huber": F.huber_loss,  # delta 1: squared below one standard deviation of the targets, absolute above
}


def loss_name(params: Mapping[str, Any], regression: bool) -> str:
    """The trial's ``loss``, or its task's default where the parameters do not name one."""
    return params.get("loss") or LOSSES["regression" if regression else "classification"][0]


def loss_function(params: Mapping[str, Any], regression: bool, reduction: str = "mean") -> Loss:
    """``loss(outputs, targets)`` of the trial's ``loss`` (``label_smoothing`` goes to cross-entropy,
    the only loss that has it). Raises ValueError for a loss of the other task."""
    name = loss_name(params, regression)
    task = "regression" if regression else "classification"
    if name not in LOSSES[task]:
        raise ValueError(f"loss {name!r} does not fit a {task} task; use one of {', '.join(LOSSES[task])}")
    kwargs: dict[str, Any] = {"reduction": reduction}
    if name == "cross_entropy":
        kwargs["label_smoothing"] = float(params.get("label_smoothing", 0.0))
    return functools.partial(_FUNCTIONS[name], **kwargs)
