"""A data factory that returns a ``torch.utils.data.Dataset`` (with its labels): data for a user objective.

``load()`` may return ``(dataset, labels)``, ``(train, y_train, test, y_test)`` or a dict with the keys
``x``/``x_train``, ``y``/``y_train``, ``x_test``, ``y_test`` where the inputs are torch Datasets and the
labels are arrays (one per item: what the folds are stratified on, and what the default test scores
against). The items are read only by the user's own training step (:mod:`hpo.objective`): hpo splits
by index and hands out ``torch.utils.data.Subset`` views; nothing is loaded into memory here.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from hpo.data._arrays import _encoded, _labels, to_numpy
from hpo.data._checks import check_classes, check_rows
from hpo.data._dataset import Dataset
from hpo.data._split import split
from hpo.errors import DataError


def is_torch_dataset(value: Any) -> bool:
    """Whether ``value`` is a ``torch.utils.data.Dataset`` (without importing torch when nothing has)."""
    data = sys.modules.get("torch.utils.data")
    return data is not None and isinstance(value, data.Dataset)


def _length(ds: Any, name: str, source: str) -> int:
    try:
        return len(ds)
    except TypeError:
        raise DataError(f"{source}: {name} is a torch Dataset without __len__ (an IterableDataset?); hpo splits "
                        "folds by index, so it needs a map-style Dataset with __len__ and __getitem__") from None


def dataset_from_torch(parts: dict[str, Any], *, name: str, source: str, task: str, test_size: float, seed: int,
                       folds: int | None = None) -> Dataset:
    """A :class:`Dataset` whose ``x_train``/``x_test`` are torch Datasets (``Subset`` views when ``test_size`` is
    split off here, stratified for classification), with checked and encoded labels. Raises :class:`DataError`
    starting with ``source``: labels missing or of another length, inputs mixing Datasets and arrays,
    a Dataset without ``__len__``, and the label rules of array data."""
    from torch.utils.data import Subset

    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if parts.get(xk) is None:
            continue
        if not is_torch_dataset(parts[xk]):
            raise DataError(f"{source}: x is a torch Dataset but {xk} is {type(parts[xk]).__name__}; give both as "
                            "Datasets (or both as arrays)")
        if parts.get(yk) is None:
            raise DataError(f"{source}: the Dataset {xk} comes without {yk}: return its labels (regression: targets) "
                            f"too, one per item, e.g. (dataset, labels); the folds are drawn from them")
        n, m = _length(parts[xk], xk, source), len(parts[yk])
        if n != m:
            raise DataError(f"{source}: {xk} has {n} items but {yk} has {m} labels: one label per item")
    if (parts.get("x_test") is None) != (parts.get("y_test") is None):
        raise DataError(f"{source}: give x_test and y_test together, or neither (then data.test_size is split off)")
    ys = {k: _labels(to_numpy(parts[k], k, source), k, source, task) for k in ("y", "y_test") if parts.get(k) is not None}
    class_names: tuple[str, ...] = ()
    if task == "classification":
        ys, class_names = _encoded(ys, source)
    if parts.get("x_test") is not None:
        x_train, y_train, x_test, y_test = parts["x"], ys["y"], parts["x_test"], ys["y_test"]
    else:
        check_rows(len(ys["y"]), source, "items")
        if task == "classification":
            check_classes(ys["y"], class_names, source=source, subject="y", unit="item",
                          fix="add items or merge or drop those classes")
        idx = np.arange(len(ys["y"]))
        tr, te, y_train, y_test = split(idx, ys["y"], task=task, test_size=test_size, seed=seed, source=source)
        x_train, x_test = Subset(parts["x"], tr.tolist()), Subset(parts["x"], te.tolist())
    if task == "classification":
        need = max(folds or 1, 1)
        check_classes(y_train, class_names, source=source, subject="y", minimum=need, unit="item",
                      where=" in the training split",
                      fix=f"cv.folds: {folds} stratified folds need {need} of each; add items or lower cv.folds")
    return Dataset(name=name, task=task, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   n_classes=len(class_names), is_image=False, class_names=class_names)
