"""The :class:`Dataset` container every loader returns."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpo.errors import DataError

TASKS = ("classification", "regression")


class DataKeyError(DataError):
    """A :class:`DataError` whose fix is another spec key than ``data.path`` (``data.target``, ``data.task``)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def path_kind(path: Path) -> str:
    """What is at ``path``, in words: "a regular file", "a folder", "a FIFO (named pipe)", ... or "not found"."""
    from hpo.spec import file_kind  # the one list of file kinds; light (no torch)

    try:
        return file_kind(os.stat(path).st_mode)
    except OSError:
        return "not found"


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A loaded data set with a fixed train/test split.

    Images are ``(N, C, H, W)``: ``uint8`` in 0..255 (MNIST, CIFAR) or ``float32``
    (digits, 0..16). Tabular features are ``(N, F)`` ``float32`` and are *not*
    standardised (the trainer does that per fold). Classification labels are
    ``int64`` in ``0..n_classes-1``; regression targets are ``float32``.

    Equality and hashing are by identity (the fields are arrays).
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    is_image: bool
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Dataset.task must be one of {TASKS}, got {self.task!r}")
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"Dataset {self.name!r}: x and y lengths differ "
                f"(train {len(self.x_train)} vs {len(self.y_train)}, test {len(self.x_test)} vs {len(self.y_test)})"
            )
        if hasattr(self.x_train, "shape") and self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"Dataset {self.name!r}: train and test inputs differ in shape "
                f"({self.x_train.shape[1:]} vs {self.x_test.shape[1:]})"
            )
        if (self.task == "regression") != (self.n_classes == 0):
            raise ValueError(f"Dataset {self.name!r}: n_classes must be 0 exactly for regression")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(F,)`` for tabular data, ``(C, H, W)`` for images; ``()`` for a torch Dataset
        (a user objective's data, whose items only its own code reads)."""
        return tuple(self.x_train.shape[1:]) if hasattr(self.x_train, "shape") else ()

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, input_shape={self.input_shape}, x_dtype={getattr(self.x_train, 'dtype', None)}, "
            f"n_classes={self.n_classes}, is_image={self.is_image})"
        )
