"""Cross-validation folds: index arrays from scikit-learn's splitters, fixed by the seed."""

from __future__ import annotations

import numpy as np

from hpo.errors import DataError


def make_folds(y: np.ndarray, k: int, seed: int, stratified: bool,
               class_names: tuple[str, ...] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return ``k`` ``(train_idx, val_idx)`` pairs over ``len(y)`` examples.

    Stratified (``StratifiedKFold``) for classification, plain ``KFold`` otherwise; shuffled
    with ``seed`` so every trial of a study sees the same folds. Raises :class:`DataError`
    when a class has fewer than ``k`` examples or there are fewer than ``k`` examples.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if n < k:
        raise DataError(f"cv.folds: {k} folds need at least {k} training examples; the training split has {n}")
    if stratified:
        classes, counts = np.unique(y, return_counts=True)
        if counts.min() < k:
            smallest = classes[counts.argmin()].item()
            if class_names and 0 <= smallest < len(class_names):
                smallest = class_names[smallest]
            raise DataError(
                f"cv.folds: {k} stratified folds need at least {k} examples of every class, "
                f"but class {smallest!r} has {counts.min()} in the training split; lower cv.folds"
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in splitter.split(np.zeros(n), y)]
