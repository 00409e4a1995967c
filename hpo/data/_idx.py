"""MNIST and Fashion-MNIST from the four official IDX files (plain or ``.gz``)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hpo.data._dataset import Dataset
from hpo.errors import DataError

#: IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: role -> base file name (each may also be present as ``NAME.gz``).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}  # fmt: skip

# Sub-folders also searched, so a torchvision download folder works as ``path`` too.
_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_exact(f: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` from ``f``; return how many bytes were read (less only at end of file)."""
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain, or gzip when the name ends in ``.gz``).

    Returns an array of the shape and type the header declares, in native byte
    order (``uint8`` for MNIST). Raises :class:`DataError` naming the file when it is
    missing, truncated, has trailing bytes, a bad magic number or is not valid gzip.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise DataError(f"{path}: not an IDX file (only {len(magic)} bytes); re-download it")
            if magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES or magic[3] == 0:
                raise DataError(
                    f"{path}: not an IDX file (magic number {magic.hex()}, expected 0000TTDD with a known "
                    "type TT); point data.path at the original MNIST files"
                )
            dtype = IDX_DTYPES[magic[2]]
            ndim = magic[3]
            header = f.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header; re-download the file")
            shape = tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))
            out = np.empty(shape, dtype=dtype)
            nbytes = out.nbytes
            got = _read_exact(f, memoryview(out).cast("B")) if nbytes else 0
            if got < nbytes:
                raise DataError(
                    f"{path}: truncated IDX file: header declares shape {shape} ({nbytes} data bytes) "
                    f"but only {got} are there; delete it and download it again"
                )
            if f.read(1):
                raise DataError(
                    f"{path}: more data than the IDX header's shape {shape} declares; re-download it"
                )
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); delete it and download it again") from None
    if dtype.itemsize > 1:
        out = out.astype(dtype.newbyteorder("="))
    return out


def _find(folder: Path, base: str) -> Path | None:
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate_idx_files(name: str, root: Path) -> tuple[dict[str, Path], list[str]]:
    """Find the four IDX files of ``name`` under ``root``.

    Looks in ``root``, then ``root/raw`` and ``root/<MNIST|FashionMNIST>/raw`` (torchvision's
    layout). Returns ``(role -> file, [])`` when all four are in one folder, else
    ``({}, [missing names in root])``.
    """
    folders = [root, root / "raw", root / _TORCHVISION_DIRS.get(name, "MNIST") / "raw"]
    for folder in folders:
        found = {role: _find(folder, base) for role, base in IDX_FILES.items()}
        if all(found.values()):
            return {role: p for role, p in found.items() if p is not None}, []
    found = {role: _find(root, base) for role, base in IDX_FILES.items()}
    return {}, [f"{base}[.gz]" for role, base in IDX_FILES.items() if found[role] is None]


def load_idx_dataset(name: str, root: Path) -> Dataset:
    """Load ``mnist`` or ``fashion_mnist`` from ``root`` with the official train/test split.

    Returns images ``(N, 1, 28, 28)`` uint8 and int64 labels 0..9.
    Raises :class:`DataError` for missing or malformed files.
    """
    files, missing = locate_idx_files(name, root)
    if missing:
        raise DataError(f"{name}: missing in {root}: {', '.join(missing)}")
    arrays = {role: read_idx(p) for role, p in files.items()}
    parts = {}
    for split_name in ("train", "test"):
        images, labels = arrays[f"{split_name}_images"], arrays[f"{split_name}_labels"]
        img_file, lab_file = files[f"{split_name}_images"], files[f"{split_name}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(
                f"{img_file}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"{lab_file}: expected {len(images)} labels to match {img_file.name}, got shape {labels.shape}"
            )
        if len(labels) and int(labels.max()) >= 10:
            raise DataError(f"{lab_file}: labels must be 0..9, found {int(labels.max())}")
        parts[split_name] = (images[:, None, :, :], labels.astype(np.int64))
    if parts["train"][0].shape[1:] != parts["test"][0].shape[1:]:
        raise DataError(f"{name}: train and test images in {root} differ in size")
    return Dataset(
        name=name,
        task="classification",
        x_train=parts["train"][0],
        y_train=parts["train"][1],
        x_test=parts["test"][0],
        y_test=parts["test"][1],
        n_classes=10,
        is_image=True,
        class_names=CLASS_NAMES[name],
    )
