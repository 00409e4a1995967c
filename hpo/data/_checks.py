"""Checks every user-supplied set shares (CSV, parquet, npz, data factories): enough rows, labels, classes.

Each check raises :class:`~hpo.errors.DataError` whose message starts with ``source`` (the file, or
the factory) and says what to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import DataError

MIN_ROWS = 10  # fewer cannot be split into a training set, a test set and folds


def user_file(path: str | Path | None, *, name: str, label: str, task: str | None) -> Path:
    """``path`` of dataset ``name`` (a ``label`` file: "CSV", "parquet", ".npz") checked to be a regular
    file, and ``task`` a known task; raises DataError (``DataKeyError`` for the task) otherwise."""
    from hpo.data._dataset import TASKS, DataKeyError, path_kind

    if path is None:
        raise DataError(f"dataset {name!r} needs a file: set data.path to the {label} file")
    path = Path(path).expanduser()
    kind = path_kind(path)
    if kind != "a regular file":
        # a FIFO would block the reader forever and a device never ends: say what it is rather than read it
        what = "not found" if kind == "not found" else f"is {kind}, not a regular file"
        raise DataError(f"{label} file {what}: {path}; set data.path to the {label} file")
    if task not in TASKS:
        raise DataKeyError(f"{path}: data.task must be 'classification' or 'regression' for dataset {name!r} "
                           f"(got {task!r})", "data.task")
    return path


def check_rows(n: int, source: str, unit: str = "data rows") -> None:
    """Raise unless there are at least :data:`MIN_ROWS` rows (``n``) to train and test on."""
    if n < MIN_ROWS:
        raise DataError(f"{source}: only {n} {unit}; at least {MIN_ROWS} are needed to train and test")


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class labels (strings or numbers) as ``int64`` codes ``0..K-1`` and the sorted original values as names."""
    from sklearn.preprocessing import LabelEncoder

    encoder = LabelEncoder()
    try:
        codes = encoder.fit_transform(values)
    except TypeError:  # mixed types that cannot be sorted
        codes = encoder.fit_transform(np.asarray(values).astype(str))
    return codes.astype(np.int64), tuple(str(c) for c in encoder.classes_)


def check_classes(y: np.ndarray, class_names: tuple[str, ...], *, source: str, subject: str,
                  minimum: int = 2, unit: str = "row", where: str = "", fix: str = "") -> None:
    """Raise when ``y`` (codes ``0..len(class_names)-1``) has one class, or a class with fewer than ``minimum``.

    ``subject`` names the labels in the message (``target column 'y'``, ``y``); ``where`` says which
    part was counted (``" in the training split"``); ``fix`` is appended as the advice.
    """
    n_classes = len(class_names)
    counts = np.bincount(y, minlength=n_classes)
    present = np.flatnonzero(counts)
    if n_classes < 2 or len(present) < 2:
        only = class_names[present[0]] if len(present) else "none"
        raise DataError(f"{source}: {subject} has a single class ({only!r}){where}; classification needs at "
                        "least two")
    rare = [f"{class_names[i]!r} ({counts[i]} {unit}{'' if counts[i] == 1 else 's'})"
            for i in np.flatnonzero(counts < minimum)]
    if rare:
        advice = fix or "add rows, merge or drop those classes (or use data.task: regression for a numeric target)"
        raise DataError(f"{source}: {subject} has class(es) with fewer than {minimum} {unit}s{where}: "
                        f"{', '.join(rare)}; {advice}")


def describe(value: Any) -> str:
    """A short description of ``value`` for messages: its type, and shape/dtype for arrays."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} ({getattr(value, 'dtype', '?')})"
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__
