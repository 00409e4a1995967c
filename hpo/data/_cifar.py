"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpo.data._dataset import Dataset
from hpo.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches and labels."""

    folder: str  # the folder the official archive extracts to
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: bytes
    names_key: bytes
    n_classes: int


LAYOUTS = {
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test="test_batch",
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        n_classes=10,
    ),
    "cifar100": CifarLayout(
        folder="cifar-100-python",
        train=("train",),
        test="test",
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        n_classes=100,
    ),
}

# The official CIFAR files are Python pickles (that is the only format the "python version"
# is published in). Unpickling can run arbitrary code, so this is acceptable only because
# these are the official dataset files the user points ``data.path`` at (and whose MD5 is
# verified when hpo downloads them). As a further guard the unpickler below resolves only
# the few globals a pickled numpy array needs and refuses everything else.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # avoid numpy 2's deprecated alias
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR file not found: {path}") from None
    except Exception as exc:  # pickle raises many kinds on corrupt input
        raise DataError(
            f"{path}: not a readable CIFAR python batch ({type(exc).__name__}: {exc}); "
            "delete it and download the dataset again"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _folder(name: str, root: Path) -> Path:
    layout = LAYOUTS[name]
    nested = root / layout.folder
    if nested.is_dir() or not (root / layout.test).is_file():
        return nested
    return root  # ``path`` is the extracted folder itself


def missing_cifar_files(name: str, root: Path) -> list[str]:
    """Names (relative to ``root``) of the CIFAR files that are not there; empty when all are."""
    layout = LAYOUTS[name]
    folder = _folder(name, root)
    rel = "" if folder == root else f"{layout.folder}/"
    return [f"{rel}{f}" for f in (*layout.train, layout.test, layout.meta) if not (folder / f).is_file()]


def _batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if b"data" not in d or layout.label_key not in d:
        keys = sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in d)
        raise DataError(
            f"{path}: expected keys 'data' and {layout.label_key.decode()!r}, found {keys}; "
            "is this the right CIFAR variant?"
        )
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[layout.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.n_classes):
        raise DataError(
            f"{path}: labels must be 0..{layout.n_classes - 1}, found {labels.min()}..{labels.max()}"
        )
    return data, labels


def load_cifar(name: str, root: Path) -> Dataset:
    """Load ``cifar10`` or ``cifar100`` from ``root`` (the extracted folder or its parent).

    Returns images ``(N, 3, 32, 32)`` uint8 with the official train/test split and
    class names from the meta file (CIFAR-100: the 100 fine labels).
    Raises :class:`DataError` for missing or malformed files.
    """
    layout = LAYOUTS[name]
    missing = missing_cifar_files(name, root)
    if missing:
        raise DataError(f"{name}: missing in {root}: {', '.join(missing)}")
    folder = _folder(name, root)
    train = [_batch(folder / f, layout) for f in layout.train]
    if len(train) == 1:
        x_train, y_train = train[0]
    else:
        x_train = np.concatenate([b[0] for b in train])
        y_train = np.concatenate([b[1] for b in train])
    x_test, y_test = _batch(folder / layout.test, layout)

    meta_path = folder / layout.meta
    meta = _unpickle(meta_path)
    raw_names = meta.get(layout.names_key)
    if raw_names is None or len(raw_names) != layout.n_classes:
        raise DataError(
            f"{meta_path}: expected {layout.n_classes} class names under {layout.names_key.decode()!r}"
        )
    class_names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw_names)

    return Dataset(
        name=name,
        task="classification",
        x_train=x_train.reshape(-1, 3, 32, 32),
        y_train=y_train,
        x_test=x_test.reshape(-1, 3, 32, 32),
        y_test=y_test,
        n_classes=layout.n_classes,
        is_image=True,
        class_names=class_names,
    )
