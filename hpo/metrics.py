"""Validation metrics: which task each fits, which way is better, and how to compute it.

Computation uses scikit-learn's implementations on predictions moved to the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MetricInfo:
    """A metric's task (``classification``/``regression``) and natural direction."""

    task: str
    direction: str
    doc: str


METRICS: dict[str, MetricInfo] = {
    "accuracy": MetricInfo("classification", "maximize", "fraction of correct labels"),
    "balanced_accuracy": MetricInfo("classification", "maximize", "mean recall over classes"),
    "f1_macro": MetricInfo("classification", "maximize", "unweighted mean F1 over classes"),
    "log_loss": MetricInfo("classification", "minimize", "cross-entropy of the predicted probabilities"),
    "rmse": MetricInfo("regression", "minimize", "root mean squared error, in target units"),
    "mae": MetricInfo("regression", "minimize", "mean absolute error, in target units"),
    "r2": MetricInfo("regression", "maximize", "coefficient of determination"),
}

DEFAULT_METRIC = {"classification": "accuracy", "regression": "rmse"}


def compute_metric(name: str, y_true: np.ndarray, output: np.ndarray, n_classes: int = 0) -> float:
    """Return metric ``name`` for targets ``y_true`` and raw model ``output``.

    ``output`` holds class probabilities (N, n_classes) for classification and
    predictions (N,) in target units for regression.
    """
    if name == "accuracy":  # the common case needs no scikit-learn (a second of import in a fresh Ray worker)
        return float(np.mean(output.argmax(1) == y_true))
    from sklearn import metrics as skm

    if name == "balanced_accuracy":
        return float(skm.balanced_accuracy_score(y_true, output.argmax(1)))
    if name == "f1_macro":
        return float(skm.f1_score(y_true, output.argmax(1), average="macro", labels=np.arange(n_classes)))
    if name == "log_loss":
        return float(skm.log_loss(y_true, output, labels=np.arange(n_classes)))
    if name == "rmse":
        return float(np.sqrt(skm.mean_squared_error(y_true, output)))
    if name == "mae":
        return float(skm.mean_absolute_error(y_true, output))
    if name == "r2":
        return float(skm.r2_score(y_true, output))
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")


def is_better(a: float, b: float | None, direction: str) -> bool:
    """Return True when value ``a`` beats ``b`` (``None`` is beaten by anything finite)."""
    if b is None or not np.isfinite(b):
        return bool(np.isfinite(a))
    return a > b if direction == "maximize" else a < b
