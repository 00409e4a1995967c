"""Train/test splitting shared by the loaders that have no official test set."""

from __future__ import annotations

import numpy as np

from hpo.errors import DataError


def check_test_size(test_size: float) -> float:
    """Return ``test_size`` as a float; raise :class:`DataError` unless 0 < test_size < 1."""
    try:
        value = float(test_size)
    except (TypeError, ValueError):
        raise DataError(f"data.test_size must be a number between 0 and 1 (got {test_size!r})") from None
    if not 0.0 < value < 1.0:
        raise DataError(f"data.test_size must be between 0 and 1, exclusive (got {test_size!r})")
    return value


def split(
    x: np.ndarray, y: np.ndarray, *, task: str, test_size: float, seed: int, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split with ``train_test_split``, stratified on ``y`` for classification.

    Returns ``(x_train, x_test, y_train, y_test)``.
    Raises :class:`DataError` (naming ``source``) when the split is impossible,
    e.g. a test set smaller than the number of classes.
    """
    from sklearn.model_selection import train_test_split

    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x,
            y,
            test_size=check_test_size(test_size),
            random_state=seed,
            stratify=y if task == "classification" else None,
        )
    except ValueError as exc:
        raise DataError(
            f"{source}: cannot split {len(y)} rows into train and test with test_size={test_size}: {exc}. "
            "Use more rows or change data.test_size."
        ) from None
    return x_train, x_test, y_train, y_test
