"""Tests of hpo.data: real loaders on real (bundled) data and on small files written here.

Downloads are tested against a local http.server on 127.0.0.1 serving archives built here.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import math
import os
import pickle
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hpo.data import (
    DATASETS,
    DOWNLOADABLE,
    FILE_DATASETS,
    SOURCES,
    Dataset,
    dataset_task,
    load_dataset,
    read_idx,
)
from hpo.errors import DataError, HpoError

# ---------------------------------------------------------------------------- registry


def test_names_and_registry_are_consistent() -> None:
    assert DATASETS == (
        "digits", "iris", "wine", "breast_cancer", "diabetes", "mnist_5k",
        "mnist", "fashion_mnist", "cifar10", "cifar100", "csv", "npz", "parquet",
    )  # fmt: skip
    assert set(FILE_DATASETS) <= set(DATASETS)
    assert set(DOWNLOADABLE) <= set(FILE_DATASETS)
    assert set(SOURCES) == set(DOWNLOADABLE)
    for source in SOURCES.values():
        for filename, md5 in source.files:
            assert len(md5) == 32 and all(c in "0123456789abcdef" for c in md5), filename
    assert issubclass(DataError, HpoError)


def test_dataset_task() -> None:
    assert dataset_task("iris") == "classification"
    assert dataset_task("diabetes") == "regression"
    assert dataset_task("cifar100", "classification") == "classification"
    assert dataset_task("csv", "regression") == "regression"
    with pytest.raises(DataError, match="regression set"):
        dataset_task("diabetes", "classification")
    with pytest.raises(DataError, match="needs data.task"):
        dataset_task("csv")
    with pytest.raises(DataError, match="classification' or 'regression"):
        dataset_task("csv", "ranking")
    with pytest.raises(DataError, match="Did you mean 'fashion_mnist'"):
        dataset_task("fashion_mnst")


def test_unknown_name_and_bad_test_size() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar1000'.*cifar100"):
        load_dataset("cifar1000")
    for bad in (0, 1, 1.5, -0.1, "x"):
        with pytest.raises(DataError, match="test_size"):
            load_dataset("iris", test_size=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- bundled sets

SKLEARN_EXPECTED = {
    # name: (rows, input_shape, n_classes, is_image)
    "digits": (1797, (1, 8, 8), 10, True),
    "iris": (150, (4,), 3, False),
    "wine": (178, (13,), 3, False),
    "breast_cancer": (569, (30,), 2, False),
    "diabetes": (442, (10,), 0, False),
}


def _check_split_sizes(ds: Dataset, rows: int, test_size: float) -> None:
    n_test = math.ceil(rows * test_size)
    assert len(ds.x_test) == len(ds.y_test) == n_test
    assert len(ds.x_train) == len(ds.y_train) == rows - n_test


def _check_stratified(ds: Dataset, test_size: float) -> None:
    all_counts = np.bincount(np.concatenate([ds.y_train, ds.y_test]), minlength=ds.n_classes)
    test_counts = np.bincount(ds.y_test, minlength=ds.n_classes)
    assert np.all(np.abs(test_counts - all_counts * test_size) <= 1.0), (test_counts, all_counts)


@pytest.mark.parametrize("name", list(SKLEARN_EXPECTED))
def test_sklearn_sets(name: str) -> None:
    rows, shape, n_classes, is_image = SKLEARN_EXPECTED[name]
    ds = load_dataset(name, seed=3)
    assert ds.name == name
    assert ds.input_shape == shape == ds.x_test.shape[1:]
    assert ds.is_image is is_image
    assert ds.n_classes == n_classes
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    _check_split_sizes(ds, rows, 0.2)
    if n_classes:
        assert ds.task == "classification"
        assert ds.y_train.dtype == ds.y_test.dtype == np.int64
        assert len(ds.class_names) == n_classes
        assert set(np.unique(ds.y_train)) == set(range(n_classes))
        _check_stratified(ds, 0.2)
    else:
        assert ds.task == "regression"
        assert ds.y_train.dtype == np.float32
        assert ds.class_names == ()
    if is_image:
        assert ds.feature_names == ()
    else:
        assert len(ds.feature_names) == shape[0]

    again = load_dataset(name, seed=3)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    other = load_dataset(name, seed=4)
    assert not np.array_equal(ds.y_train, other.y_train) or not np.array_equal(ds.x_train, other.x_train)


def test_digits_keeps_raw_pixel_range() -> None:
    ds = load_dataset("digits")
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 16.0


def test_diabetes_is_unscaled() -> None:
    ds = load_dataset("diabetes")
    y = np.concatenate([ds.y_train, ds.y_test])
    assert y.min() >= 25 and y.max() > 300  # raw disease progression, not standardised
    age = ds.feature_names.index("age")
    assert ds.x_train[:, age].max() > 50  # raw ages in years


def test_custom_test_size() -> None:
    ds = load_dataset("iris", test_size=0.5, seed=1)
    _check_split_sizes(ds, 150, 0.5)
    assert np.array_equal(np.bincount(ds.y_test), [25, 25, 25])


def test_mnist_5k() -> None:
    ds = load_dataset("mnist_5k", seed=0)
    assert ds.task == "classification" and ds.is_image and ds.n_classes == 10
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    assert ds.x_train.flags.writeable
    assert np.array_equal(np.bincount(ds.y_test), [100] * 10)
    assert ds.class_names == tuple("0123456789")
    again = load_dataset("mnist_5k", seed=0)
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    other = load_dataset("mnist_5k", seed=1, test_size=0.1)
    assert len(other.x_test) == 500 and not np.array_equal(other.y_train[:100], ds.y_train[:100])


def test_dataset_repr_and_identity() -> None:
    ds = load_dataset("iris")
    assert "iris" in repr(ds) and "input_shape=(4,)" in repr(ds)
    assert ds == ds and hash(ds) == hash(ds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------- IDX (MNIST files)

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise ``arr`` in the IDX format (big-endian header and data)."""
    code = _IDX_CODES[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    data = idx_bytes(arr)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def write_mnist_folder(folder: Path, *, gz: bool, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for base, arr in arrays.items():
        write_idx(folder / (base + (".gz" if gz else "")), arr)
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32),
        np.array([0.5, -1.25, 3e8], dtype=np.float32),
    ],
    ids=["uint8", "int32", "float32"],
)
def test_read_idx_round_trip(tmp_path: Path, arr: np.ndarray, suffix: str) -> None:
    out = read_idx(write_idx(tmp_path / f"a.idx{suffix}", arr))
    assert out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist_folder(tmp_path, gz=gz)
    ds = load_dataset("mnist", path=tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.n_classes == 10 and ds.is_image and ds.task == "classification"
    assert ds.class_names == tuple("0123456789")


def test_fashion_mnist_class_names_and_torchvision_layout(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path / "FashionMNIST" / "raw", gz=False)
    ds = load_dataset("fashion_mnist", path=str(tmp_path), test_size=0.9)  # test_size ignored: official split
    assert len(ds.x_test) == 5
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_idx_truncated_or_corrupt(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    data = idx_bytes(arr)
    (tmp_path / "short").write_bytes(data[:-7])
    with pytest.raises(DataError, match=r"short: truncated IDX file.*\(3, 4, 5\)"):
        read_idx(tmp_path / "short")
    (tmp_path / "short_header").write_bytes(data[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(tmp_path / "short_header")
    (tmp_path / "short.gz").write_bytes(gzip.compress(data)[:-12])
    with pytest.raises(DataError, match="short.gz"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "magic").write_bytes(b"\x08\x00" + data[2:])
    with pytest.raises(DataError, match="magic number"):
        read_idx(tmp_path / "magic")
    (tmp_path / "long").write_bytes(data + b"\x00")
    with pytest.raises(DataError, match="more data"):
        read_idx(tmp_path / "long")
    (tmp_path / "plain.gz").write_bytes(data)
    with pytest.raises(DataError, match="plain.gz: cannot read"):
        read_idx(tmp_path / "plain.gz")
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "absent")


def test_mnist_truncated_file_in_folder(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path, gz=True)
    target = tmp_path / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes())[:-100]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: truncated"):
        load_dataset("mnist", path=tmp_path)


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="expected 12 labels"):
        load_dataset("mnist", path=tmp_path)


# ---------------------------------------------------------------------------- CIFAR pickles

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj: object, protocol: int) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(folder: Path, *, per_batch: int = 4, n_test: int = 3, protocol: int = 2) -> dict:
    """Official layout: data_batch_1..5, test_batch, batches.meta, bytes keys."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray] = {}
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        xs.append(x)
        ys.extend(y)
        _dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": y, b"data": x,
                                            b"filenames": [b"f.png"] * per_batch}, protocol)  # fmt: skip
    x_test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    y_test = [int(v) for v in rng.integers(0, 10, n_test)]
    _dump(
        folder / "test_batch",
        {b"batch_label": b"testing batch", b"labels": y_test, b"data": x_test},
        protocol,
    )
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                    b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol)  # fmt: skip
    out["x_train"], out["y_train"] = np.concatenate(xs), np.array(ys)
    out["x_test"], out["y_test"] = x_test, np.array(y_test)
    return out


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10(tmp_path: Path, protocol: int) -> None:
    ref = write_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = load_dataset("cifar10", path=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train.reshape(20, -1), ref["x_train"])
    np.testing.assert_array_equal(ds.y_train, ref["y_train"])
    np.testing.assert_array_equal(ds.x_test[1, 2].ravel(), ref["x_test"][1, 2048:])  # channel-major rows
    np.testing.assert_array_equal(ds.y_test, ref["y_test"])
    assert ds.class_names == tuple(CIFAR10_NAMES) and ds.n_classes == 10 and ds.is_image
    # ``path`` may also be the extracted folder itself
    inner = load_dataset("cifar10", path=tmp_path / "cifar-10-batches-py")
    np.testing.assert_array_equal(inner.y_train, ds.y_train)


def test_cifar100(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    fine = [0, 99, 5, 42, 42, 7, 1]
    _dump(folder / "train", {b"data": x, b"fine_labels": fine, b"coarse_labels": [0] * 7}, 2)
    _dump(folder / "test", {b"data": x[:2], b"fine_labels": fine[:2], b"coarse_labels": [0, 1]}, 2)
    names = [f"class{i}".encode() for i in range(100)]
    _dump(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, 2)
    ds = load_dataset("cifar100", path=tmp_path)
    assert ds.x_train.shape == (7, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(ds.y_train, fine)
    assert ds.n_classes == 100 and ds.class_names[99] == "class99"


def test_cifar_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(b"\x80\x02}q\x00(")  # cut-off pickle
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR"):
        load_dataset("cifar10", path=tmp_path)
    write_cifar10(folder)
    _dump(folder / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [1, 2]}, 2)
    with pytest.raises(DataError, match="test_batch: expected keys 'data' and 'labels'"):
        load_dataset("cifar10", path=tmp_path)
    # Only numpy arrays may be rebuilt: any other global in the pickle is refused.
    _dump(folder / "test_batch", {b"data": OrderedDict(), b"labels": []}, 2)
    with pytest.raises(DataError, match="refusing to load collections.OrderedDict"):
        load_dataset("cifar10", path=tmp_path)


# ---------------------------------------------------------------------------- CSV


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _class_csv(rows: int = 20) -> str:
    lines = ["a,b,label"]
    for i in range(rows):
        lines.append(f"{i},{i * 0.5 + 100},{['cat', 'dog', 'emu'][i % 3]}")
    return "\n".join(lines) + "\n"


def test_csv_classification(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data_cls.csv", _class_csv())
    ds = load_dataset("csv", path=path, target="label", task="classification", seed=0, test_size=0.3)
    assert ds.task == "classification" and not ds.is_image
    assert ds.class_names == ("cat", "dog", "emu") and ds.n_classes == 3
    assert ds.feature_names == ("a", "b")
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    _check_split_sizes(ds, 20, 0.3)
    # labels follow the rows, features are not standardised
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    np.testing.assert_array_equal(y, x[:, 0].astype(int) % 3)
    np.testing.assert_allclose(x[:, 1], x[:, 0] * 0.5 + 100)
    again = load_dataset("csv", path=str(path), target="label", task="classification", seed=0, test_size=0.3)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_csv_numeric_classification_and_regression(tmp_path: Path) -> None:
    lines = ["x1,x2,y,flag"] + [f"{i},{i % 4},{i * 2.5},{i % 2}" for i in range(30)]
    path = write_csv(tmp_path / "data_reg.csv", "\n".join(lines))
    reg = load_dataset("csv", path=path, target="y", task="regression")
    assert reg.task == "regression" and reg.n_classes == 0 and reg.y_train.dtype == np.float32
    assert reg.feature_names == ("x1", "x2", "flag")
    np.testing.assert_allclose(reg.y_train, reg.x_train[:, 0] * 2.5)
    cls = load_dataset("csv", path=path, target="x2", task="classification")
    assert cls.class_names == ("0", "1", "2", "3") and cls.input_shape == (3,)
    _check_stratified(cls, 0.2)


def _rows_csv(header: str, row: Callable[[int], str], rows: int = 12) -> str:
    return "\n".join([header] + [row(i) for i in range(rows)]) + "\n"


BAD_CSVS = {
    # case: (csv text, target, task, regex the message must match)
    "non-numeric feature": (
        _rows_csv("a,colour,y", lambda i: f"{i},{'red' if i % 2 else 'blue'},{i % 2}"),
        "y", "classification", r"feature column 'colour' is not numeric \(e.g. 'blue' at line 2\)",
    ),
    "empty value": (
        _rows_csv("a,b,y", lambda i: f"{i},{'' if i == 3 else i},{i % 2}"),
        "y", "classification", r"column 'b' has 1 empty or NaN value\(s\), at line\(s\) 5",
    ),
    "NaN value": (
        _rows_csv("a,b,y", lambda i: f"{i},{'nan' if i > 8 else i},{i % 2}"),
        "y", "classification", r"column 'b' has 3 empty or NaN",
    ),
    "NaN target": (
        _rows_csv("a,b,y", lambda i: f"{i},{i},{'' if i == 0 else i % 2}"),
        "y", "classification", r"column 'y' has 1 empty",
    ),
    "unknown target": (
        _rows_csv("age,income,label", lambda i: f"{i},{i},{i % 2}"),
        "labels", "classification", r"target column 'labels' not found; columns are: age, income, label\. "
        r"Did you mean 'label'\?",
    ),
    "single class": (
        _rows_csv("a,b,y", lambda i: f"{i},{i},yes"),
        "y", "classification", r"target column 'y' has a single class \('yes'\)",
    ),
    "rare class": (
        _rows_csv("a,b,y", lambda i: f"{i},{i},{'rare' if i == 5 else i % 2}"),
        "y", "classification", r"target column 'y' has class\(es\) with fewer than 2 rows: 'rare' \(1 row\)",
    ),
    "too few rows": (
        _rows_csv("a,b,y", lambda i: f"{i},{i},{i % 2}", rows=9),
        "y", "classification", r"only 9 data rows; at least 10",
    ),
    "non-numeric regression target": (
        _rows_csv("a,b,y", lambda i: f"{i},{i},{'high' if i % 2 else 'low'}"),
        "y", "regression", r"target column 'y' must be numeric for regression \(e.g. 'low'\)",
    ),
    "no target": (
        _rows_csv("a,b,y", lambda i: f"{i},{i},{i % 2}"),
        None, "classification", r"set data.target to the column to predict; columns are: a, b, y",
    ),
    "no task": (
        _rows_csv("a,b,y", lambda i: f"{i},{i},{i % 2}"),
        "y", None, r"needs data.task",
    ),
    "only the target": (
        _rows_csv("y", lambda i: f"{i % 2}"),
        "y", "classification", r"no feature columns besides the target 'y'",
    ),
    "infinite feature": (
        _rows_csv("a,b,y", lambda i: f"{i},{'inf' if i == 2 else i},{i % 2}"),
        "y", "classification", r"feature column 'b' has values that are infinite",
    ),
    "test set smaller than classes": (
        _rows_csv("a,y", lambda i: f"{i},{i % 5}", rows=10),
        "y", "classification", r"cannot split 10 rows",
    ),
    "empty file": ("", "y", "classification", r"the file is empty"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_csv_bad_inputs(tmp_path: Path, case: str) -> None:
    text, target, task, pattern = BAD_CSVS[case]
    path = write_csv(tmp_path / "data_bad.csv", text)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset("csv", path=path, target=target, task=task)
    assert str(path) in str(info.value) or case == "no task"


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CSV file not found: .*nothing\.csv; set data.path"):
        load_dataset("csv", path=tmp_path / "nothing.csv", target="y", task="regression")
    with pytest.raises(DataError, match="set data.path to the CSV file"):
        load_dataset("csv", target="y", task="regression")


# ---------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_missing_path_or_files(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match=r"set data.path .*data.download: true"):
        load_dataset(name)
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load_dataset(name, path=empty)
    message = str(info.value)
    assert str(empty) in message and "data.path" in message and "data.download: true" in message
    expected_file = (
        "t10k-labels-idx1-ubyte" if "mnist" in name else ("test_batch" if name == "cifar10" else "meta")
    )
    assert expected_file in message


def test_partly_missing_mnist_names_the_missing_files(tmp_path: Path) -> None:
    write_mnist_folder(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing in .*: train-labels-idx1-ubyte\[\.gz\]\. Set data.path"):
        load_dataset("mnist", path=tmp_path)


# ---------------------------------------------------------------------------- download


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP server on 127.0.0.1 serving the returned folder; HPO_DATA_MIRROR points at it."""
    www = tmp_path / "www"
    www.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setenv("HPO_DATA_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        yield www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _set_md5s(monkeypatch: pytest.MonkeyPatch, name: str, md5s: dict[str, str]) -> None:
    source = SOURCES[name]
    files = tuple((filename, md5s[filename]) for filename, _ in source.files)
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(source, files=files))


def build_cifar10_archive(tmp_path: Path, dest: Path) -> dict:
    ref = write_cifar10(tmp_path / "build" / "cifar-10-batches-py")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dest.write_bytes(buf.getvalue())
    return ref


def test_download_cifar10(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = mirror / "cifar-10-python.tar.gz"
    ref = build_cifar10_archive(tmp_path, archive)
    _set_md5s(monkeypatch, "cifar10", {archive.name: _md5(archive)})
    root = tmp_path / "data" / "cifar"  # created by the download
    ds = load_dataset("cifar10", path=root, download=True)
    np.testing.assert_array_equal(ds.y_train, ref["y_train"])
    assert ds.x_train.shape == (20, 3, 32, 32)
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert _md5(root / archive.name) == _md5(archive)
    assert not [p for p in root.iterdir() if p.name.endswith(".part")]
    # already there: no server needed any more
    monkeypatch.setenv("HPO_DATA_MIRROR", "http://127.0.0.1:9/")
    again = load_dataset("cifar10", path=root, download=True)
    np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_download_checksum_mismatch_leaves_nothing(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_cifar10_archive(tmp_path, mirror / "cifar-10-python.tar.gz")
    wrong = "0" * 32
    _set_md5s(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": wrong})
    root = tmp_path / "dl"
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", path=root, download=True)
    message = str(info.value)
    assert "checksum mismatch" in message and "127.0.0.1" in message and "cifar-10-python.tar.gz" in message
    assert wrong in message and _md5(mirror / "cifar-10-python.tar.gz") in message
    assert list(root.iterdir()) == []


def test_download_mnist_gz(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = mirror / "mnist"  # ``{name}`` in the mirror URL selects a per-dataset folder
    arrays = write_mnist_folder(served, gz=True, n_train=9, n_test=4)
    _set_md5s(monkeypatch, "mnist", {p.name: _md5(p) for p in served.iterdir()})
    monkeypatch.setenv("HPO_DATA_MIRROR", os.environ["HPO_DATA_MIRROR"] + "{name}")
    root = tmp_path / "mnist_dl"
    ds = load_dataset("mnist", path=root, download=True)
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in served.iterdir())


def test_download_mnist_bad_md5_and_missing_file(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist_folder(mirror, gz=True)
    md5s = {p.name: _md5(p) for p in mirror.iterdir()}
    md5s["t10k-images-idx3-ubyte.gz"] = "f" * 32
    _set_md5s(monkeypatch, "mnist", md5s)
    root = tmp_path / "m"
    with pytest.raises(
        DataError, match=r"checksum mismatch for http://127\.0\.0\.1:\d+/t10k-images-idx3-ubyte\.gz"
    ):
        load_dataset("mnist", path=root, download=True)
    assert "t10k-images-idx3-ubyte.gz" not in {p.name for p in root.iterdir()}
    assert not [p for p in root.iterdir() if p.name.endswith(".part")]

    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    md5s["t10k-images-idx3-ubyte.gz"] = _md5(mirror / "t10k-images-idx3-ubyte.gz")
    _set_md5s(monkeypatch, "mnist", md5s)
    with pytest.raises(DataError, match=r"cannot download mnist: http://127\.0\.0\.1:\d+/t10k-labels.*404"):
        load_dataset("mnist", path=root, download=True)
    assert not (root / "t10k-labels-idx1-ubyte.gz").exists()


def test_official_sources() -> None:
    assert SOURCES["cifar10"].urls == ("https://www.cs.toronto.edu/~kriz/",)
    assert dict(SOURCES["cifar10"].files) == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert dict(SOURCES["cifar100"].files) == {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"}
    assert dict(SOURCES["mnist"].files)["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert (
        dict(SOURCES["fashion_mnist"].files)["t10k-labels-idx1-ubyte.gz"]
        == "bb300cfdad3c16e7a12a480ee83cd310"
    )
