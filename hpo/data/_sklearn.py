"""The small data sets bundled with scikit-learn (no download needed)."""

from __future__ import annotations

import numpy as np

from hpo.data._dataset import Dataset
from hpo.data._split import split

#: name -> task of each bundled set.
SKLEARN_TASKS = {
    "digits": "classification",
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
}


def load_sklearn(name: str, *, test_size: float, seed: int) -> Dataset:
    """Load one of :data:`SKLEARN_TASKS` and split it.

    ``digits`` stays an image set, ``(N, 1, 8, 8)`` float32 in 0..16; the others are
    tabular float32. ``diabetes`` uses the raw (unscaled) features and targets.
    Raises :class:`KeyError` for an unknown name, :class:`DataError` for a bad ``test_size``.
    """
    from sklearn import datasets

    task = SKLEARN_TASKS[name]
    if name == "diabetes":
        bunch = datasets.load_diabetes(scaled=False)
    else:
        bunch = getattr(datasets, f"load_{name}")()

    is_image = name == "digits"
    if is_image:
        x = bunch.images.astype(np.float32)[:, None, :, :]
        feature_names: tuple[str, ...] = ()
    else:
        x = np.ascontiguousarray(bunch.data, dtype=np.float32)
        feature_names = tuple(str(f) for f in bunch.feature_names)

    if task == "classification":
        y = bunch.target.astype(np.int64)
        class_names = tuple(str(c) for c in bunch.target_names)
        n_classes = len(class_names)
    else:
        y = bunch.target.astype(np.float32)
        class_names = ()
        n_classes = 0

    x_train, x_test, y_train, y_test = split(
        x, y, task=task, test_size=test_size, seed=seed, source=f"dataset {name!r}"
    )
    return Dataset(
        name=name,
        task=task,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        n_classes=n_classes,
        is_image=is_image,
        feature_names=feature_names,
        class_names=class_names,
    )
