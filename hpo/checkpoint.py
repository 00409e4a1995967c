"""Checkpoints that explain themselves: weights plus the config that rebuilds the model.

Saved with ``torch.save`` as plain tensors and primitives and always read back with
``torch.load(weights_only=True)``: loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = 1


def save_checkpoint(path: Path, *, model: str, params: dict[str, Any], input_shape: tuple[int, ...],
                    n_outputs: int, regression: bool, state: dict[str, torch.Tensor] | None = None,
                    folds: list[dict[str, torch.Tensor]] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint of one model (``state``) or of a trial's fold models (``folds``)."""
    blob = {
        "format": FORMAT,
        "model": model,
        "params": {k: v for k, v in params.items()},
        "input_shape": list(input_shape),
        "n_outputs": int(n_outputs),
        "regression": bool(regression),
        "state": state,
        "folds": folds,
        "extra": extra or {},
    }
    torch.save(blob, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(blob: dict[str, Any], fold: int | None = None) -> nn.Module:
    """Rebuild the :class:`~hpo.training.Standardized` model of a checkpoint (or of one fold), in eval mode."""
    from hpo.models import build_model
    from hpo.training import Standardized

    state = blob["state"] if fold is None else blob["folds"][fold]
    net = build_model(blob["model"], input_shape=tuple(blob["input_shape"]), n_outputs=blob["n_outputs"],
                      params=blob["params"])
    model = Standardized(net, state["x_mean"], state["x_std"], blob["regression"])
    model.load_state_dict(state)
    return model.eval()


def load_model(run_id: str, tracking_uri: str | None = None) -> nn.Module:
    """Load the refit best model of a study from its parent run (or a trial's first fold model
    from a child run that kept its checkpoint).

    Returns a module that takes raw inputs and returns logits or target-unit predictions.
    Raises :class:`~hpo.errors.TrackingError` if the run has no checkpoint.
    """
    import tempfile

    from mlflow import MlflowClient

    from hpo.errors import TrackingError
    from hpo.spec import DEFAULT_TRACKING_URI

    client = MlflowClient(tracking_uri=tracking_uri or DEFAULT_TRACKING_URI)
    for name in ("checkpoint/best.pt", "checkpoint/trial.pt"):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(run_id, name, tmp)
                blob = read_checkpoint(local)
        except Exception:
            continue
        return model_from_checkpoint(blob, fold=None if blob["state"] is not None else 0)
    raise TrackingError(f"run {run_id} has no checkpoint (checkpoint/best.pt or checkpoint/trial.pt); "
                        "pass the study's parent run id, or a trial in the top tracking.keep_checkpoints")
