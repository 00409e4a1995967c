"""A user's own arrays (an npz file, a data factory's return value) -> checked :class:`Dataset`.

The arrays may be numpy arrays or torch tensors (converted without importing torch: a tensor
is recognised by its type's module). ``x`` is ``(N, F)`` or ``(N, C, H, W)``; ``y`` is ``(N,)``:
integer labels ``0..K-1`` or strings for classification, numbers for regression.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpo.data._checks import check_classes, check_rows, describe, encode_labels, user_file
from hpo.data._dataset import Dataset
from hpo.data._split import split
from hpo.errors import DataError

ARRAY_KEYS = ("x", "y", "x_test", "y_test")


def to_numpy(value: Any, name: str, source: str) -> np.ndarray:
    """``value`` (a numpy array or a torch tensor) as a numpy array; DataError for anything else."""
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    raise DataError(f"{source}: {name} must be a numpy array or a torch tensor (got {describe(value)})")


def _inputs(x: np.ndarray, name: str, source: str) -> np.ndarray:
    """``x`` checked (2-D or 4-D, numbers, finite): uint8 stays uint8, other numbers become float32."""
    if x.ndim not in (2, 4):
        raise DataError(f"{source}: {name} must be 2-D (N, F) features or 4-D (N, C, H, W) images "
                        f"(got {x.ndim}-D, shape {x.shape})")
    if x.dtype == np.uint8:
        return x  # images stay uint8 on the device (a quarter of float32's memory)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: {name} must hold numbers (got dtype {x.dtype}); encode it as numbers first")
    out = x.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        at = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise DataError(f"{source}: {name} has {int((~finite).sum())} NaN or infinite value(s) (first at index "
                        f"{at}: {x[at].item()!r}); fix or drop those examples")
    return out


def _labels(y: np.ndarray, name: str, source: str, task: str) -> np.ndarray:
    """``y`` checked to be 1-D and to fit ``task``: float32 targets, or integer/string labels as given."""
    if y.ndim != 1:
        raise DataError(f"{source}: {name} must be 1-D, one label or target per example (got shape {y.shape})")
    if y.dtype.kind in "US" or y.dtype == object:
        if task == "regression":
            raise DataError(f"{source}: {name} holds text ({y[0]!r}); regression needs numbers "
                            "(use data.task: classification for categories)")
        if y.dtype == object and not all(isinstance(v, str) for v in y):
            raise DataError(f"{source}: {name} holds Python objects; labels must be integers or strings")
        return y
    if y.dtype.kind not in "biuf":
        raise DataError(f"{source}: {name} must hold numbers or strings (got dtype {y.dtype})")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise DataError(f"{source}: {name} has {int((~np.isfinite(y)).sum())} NaN or infinite value(s) (first at "
                        f"index {bad}); fix or drop those examples")
    if task == "regression":
        return y.astype(np.float32)
    if y.dtype.kind == "f":
        whole = y == np.round(y)
        if not whole.all():
            bad = int(np.flatnonzero(~whole)[0])
            raise DataError(f"{source}: {name} has non-integer value {y[bad].item()!r} (index {bad}); classification "
                            "labels are integers 0..K-1 or strings (use data.task: regression for a numeric target)")
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise DataError(f"{source}: {name} has label {int(labels.min())} out of range; classification labels are "
                        "integers 0..K-1 (K classes) or strings")
    return labels


def dataset_from_arrays(parts: dict[str, Any], *, name: str, source: str, task: str, test_size: float,
                        seed: int, folds: int | None = None) -> Dataset:
    """A :class:`Dataset` from ``parts`` (keys :data:`ARRAY_KEYS`; ``x_test``/``y_test`` optional, together).

    Without a test split, ``test_size`` of the examples are split off (stratified for
    classification) with ``seed``, as for the built-in sets. String labels are encoded and kept
    as class names; integer labels ``0..K-1`` get the names ``"0"..."K-1"``. ``folds``: every class
    needs that many training examples (the cross-validation folds).
    Raises :class:`DataError` starting with ``source`` for: missing arrays, lengths that differ,
    a shape other than 2-D/4-D, NaN/inf, labels that do not fit the task (out of range,
    non-integer floats), one class, a class with too few examples, an empty test split.
    """
    missing = [k for k in ("x", "y") if parts.get(k) is None]
    if missing:
        raise DataError(f"{source}: no {' or '.join(missing)}: the training inputs x and labels y are required")
    has_test = [k for k in ("x_test", "y_test") if parts.get(k) is not None]
    if len(has_test) == 1:
        other = "y_test" if has_test[0] == "x_test" else "x_test"
        raise DataError(f"{source}: {has_test[0]} without {other}: give both or neither (then data.test_size "
                        "is split off)")
    arrays = {k: to_numpy(parts[k], k, source) for k in ARRAY_KEYS if parts.get(k) is not None}
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk in arrays and len(arrays[xk]) != len(arrays[yk]):
            raise DataError(f"{source}: {xk} and {yk} have different lengths ({len(arrays[xk])} vs "
                            f"{len(arrays[yk])}): one label per example")
    if "x_test" in arrays and len(arrays["x_test"]) == 0:
        raise DataError(f"{source}: the test split x_test is empty; return test examples or only (x, y) "
                        "(then data.test_size is split off)")
    xs = {k: _inputs(arrays[k], k, source) for k in ("x", "x_test") if k in arrays}
    ys = {k: _labels(arrays[k], k, source, task) for k in ("y", "y_test") if k in arrays}
    if "x_test" in xs and (xs["x"].shape[1:] != xs["x_test"].shape[1:] or xs["x"].dtype != xs["x_test"].dtype):
        a, b = xs["x"], xs["x_test"]
        raise DataError(f"{source}: an example of x is {a.shape[1:]} {a.dtype} but one of x_test is "
                        f"{b.shape[1:]} {b.dtype}; train and test examples must have the same shape and type")

    class_names: tuple[str, ...] = ()
    if task == "classification":
        ys, class_names = _encoded(ys, source)
    if "x_test" in xs:
        x_train, y_train, x_test, y_test = xs["x"], ys["y"], xs["x_test"], ys["y_test"]
    else:
        check_rows(len(xs["x"]), source, "examples")
        if task == "classification":  # the stratified test split needs two of each class
            check_classes(ys["y"], class_names, source=source, subject="y", unit="example",
                          fix="add examples or merge or drop those classes")
        x_train, x_test, y_train, y_test = split(xs["x"], ys["y"], task=task, test_size=test_size, seed=seed,
                                                 source=source)
    if task == "classification":
        need = max(folds or 1, 1)
        check_classes(y_train, class_names, source=source, subject="y", minimum=need, unit="example",
                      where=" in the training split",
                      fix=f"cv.folds: {folds} stratified folds need {need} of each; add examples or lower cv.folds"
                      if folds else "add examples or merge or drop those classes")
    return Dataset(name=name, task=task, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   n_classes=len(class_names), is_image=x_train.ndim == 4, class_names=class_names)


def _encoded(ys: dict[str, np.ndarray], source: str) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Labels as codes ``0..K-1`` over train and test together, and the class names."""
    if ys["y"].dtype.kind == "i" and all(v.dtype.kind == "i" for v in ys.values()):
        k = int(max(int(v.max()) for v in ys.values() if len(v))) + 1
        absent = sorted(set(range(k)) - set(np.unique(ys["y"]).tolist()))
        if absent:
            shown = ", ".join(str(a) for a in absent[:5]) + (" ..." if len(absent) > 5 else "")
            raise DataError(f"{source}: labels go up to {k - 1}, but y has no example of {shown}: integer labels "
                            f"are classes 0..K-1 and each must occur in y (renumber them, or use strings)")
        return ys, tuple(str(i) for i in range(k))
    if any(v.dtype.kind == "i" for v in ys.values()):
        raise DataError(f"{source}: y and y_test mix integer and string labels; use one kind for both")
    joined = np.concatenate([v.astype(str) for v in ys.values()])
    codes, names = encode_labels(joined)
    n = len(ys["y"])
    out = {"y": codes[:n]}
    if "y_test" in ys:
        out["y_test"] = codes[n:]
    return out, names


def load_npz(path: Any, *, task: str | None, test_size: float, seed: int, folds: int | None = None) -> Dataset:
    """Load the arrays ``x``, ``y`` (and optionally ``x_test``, ``y_test``) of an ``.npz`` file; see
    :func:`dataset_from_arrays`.

    Read with ``allow_pickle=False``: an object array (pickled Python objects) is refused, never
    unpickled. Raises :class:`DataError` naming the file for: no/missing file, not an npz, unknown
    or missing arrays, object arrays, and every problem :func:`dataset_from_arrays` finds.
    """
    import zipfile

    path = user_file(path, name="npz", label=".npz", task=task)
    parts: dict[str, np.ndarray] = {}
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: is a single .npy array, not an .npz; save with np.savez(path, x=..., y=...)")
        with npz:
            unknown = [k for k in npz.files if k not in ARRAY_KEYS]
            if unknown:
                raise DataError(f"{path}: unknown array(s) {', '.join(map(repr, unknown))}; an npz for hpo holds "
                                f"{', '.join(ARRAY_KEYS)} (x_test, y_test optional)")
            for key in npz.files:
                try:
                    parts[key] = npz[key]
                except ValueError as exc:  # an object array: numpy would have to unpickle it
                    raise DataError(f"{path}: array {key!r} holds Python objects (pickled; {exc}); hpo does not "
                                    "unpickle data files: save numbers, or strings as a str array "
                                    "(np.array(labels, dtype=str))") from None
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc}); save it with "
                        "np.savez(path, x=..., y=...)") from None
    return dataset_from_arrays(parts, name="npz", source=str(path), task=task, test_size=test_size, seed=seed,
                               folds=folds)
