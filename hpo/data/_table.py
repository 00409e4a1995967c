"""A user's own table from a CSV file."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np

from hpo.data._dataset import TASKS, DataKeyError, Dataset, path_kind
from hpo.data._split import split
from hpo.errors import DataError

MIN_ROWS = 10


def _rows(index: Any, limit: int = 5) -> str:
    """File line numbers (header is line 1) of the first few rows in ``index``."""
    lines = [str(int(i) + 2) for i in list(index)[:limit]]
    more = f" (and {len(index) - limit} more)" if len(index) > limit else ""
    return ", ".join(lines) + more


def load_csv(
    path: str | Path | None, *, target: str | None, task: str | None, test_size: float, seed: int
) -> Dataset:
    """Load a CSV of numeric features plus one ``target`` column and split it.

    Classification targets (strings or numbers) are label-encoded; ``class_names`` are
    the original values as strings. Regression targets must be numeric. Features are
    float32, not standardised.
    Raises :class:`DataError` naming the file and column for: no/missing file, unknown
    target column, unknown task, fewer than 10 rows, empty/NaN cells, a non-numeric
    feature or regression target, infinite values, a classification target with one
    class or a class with fewer than 2 rows.
    """
    import pandas as pd

    if path is None:
        raise DataError("dataset 'csv' needs a file: set data.path to the CSV file")
    path = Path(path).expanduser()
    kind = path_kind(path)
    if kind != "a regular file":
        # a FIFO would block pandas forever and a device never ends: say what it is rather than read it
        what = "not found" if kind == "not found" else f"is {kind}, not a regular file"
        raise DataError(f"CSV file {what}: {path}; set data.path to the CSV file")
    if task not in TASKS:
        raise DataKeyError(
            f"{path}: data.task must be 'classification' or 'regression' for a CSV (got {task!r})", "data.task"
        )

    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file is empty; it needs a header row and at least {MIN_ROWS} rows"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot parse as CSV ({exc}); save it as comma-separated UTF-8") from None

    columns = [str(c) for c in df.columns]
    df.columns = columns
    if target is None:
        raise DataKeyError(
            f"{path}: set data.target to the column to predict; columns are: {', '.join(columns)}", "data.target"
        )
    if target not in columns:
        close = difflib.get_close_matches(target, columns, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataKeyError(
            f"{path}: target column {target!r} not found; columns are: {', '.join(columns)}.{hint}", "data.target"
        )
    if len(df) < MIN_ROWS:
        raise DataError(f"{path}: only {len(df)} data rows; at least {MIN_ROWS} are needed to train and test")
    features = [c for c in columns if c != target]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}; add input columns")

    na = df.isna()
    for column in columns:
        bad = df.index[na[column].to_numpy()]
        if len(bad):
            raise DataError(
                f"{path}: column {column!r} has {len(bad)} empty or NaN value(s), at line(s) {_rows(bad)}; "
                "fill them in or drop those rows"
            )

    for column in features:
        series = df[column]
        if not pd.api.types.is_numeric_dtype(series):
            numeric = pd.to_numeric(series, errors="coerce")
            bad = series.index[numeric.isna().to_numpy()]
            if not len(bad):  # e.g. numbers pandas kept as text: all convert cleanly
                df[column] = numeric
                continue
            raise DataError(
                f"{path}: feature column {column!r} is not numeric (e.g. {series.loc[bad[0]]!r} at line "
                f"{_rows(bad[:1])}); features must be numbers: encode it (e.g. one-hot) or drop the column"
            )

    x = df[features].to_numpy(dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        col = features[int(np.argwhere(~finite)[0][1])]
        raise DataError(
            f"{path}: feature column {col!r} has values that are infinite or too large for float32; fix or drop them"
        )

    y_raw = df[target]
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(y_raw) or pd.api.types.is_bool_dtype(y_raw):
            bad = y_raw.index[pd.to_numeric(y_raw, errors="coerce").isna().to_numpy()]
            example = y_raw.loc[bad[0]] if len(bad) else y_raw.iloc[0]
            raise DataError(
                f"{path}: target column {target!r} must be numeric for regression (e.g. {example!r}); "
                "use data.task: classification for categories"
            )
        y = y_raw.to_numpy(dtype=np.float32)
        if not np.isfinite(y).all():
            raise DataError(f"{path}: target column {target!r} has infinite values; fix or drop those rows")
        class_names: tuple[str, ...] = ()
        n_classes = 0
    else:
        from sklearn.preprocessing import LabelEncoder

        encoder = LabelEncoder()
        try:
            y = encoder.fit_transform(y_raw.to_numpy()).astype(np.int64)
        except TypeError:  # mixed types that cannot be sorted
            y = encoder.fit_transform(y_raw.astype(str).to_numpy()).astype(np.int64)
        class_names = tuple(str(c) for c in encoder.classes_)
        n_classes = len(class_names)
        if n_classes < 2:
            raise DataError(
                f"{path}: target column {target!r} has a single class ({class_names[0]!r}); "
                "classification needs at least two"
            )
        counts = np.bincount(y, minlength=n_classes)
        rare = [f"{class_names[i]!r} ({counts[i]} row)" for i in np.flatnonzero(counts < 2)]
        if rare:
            raise DataError(
                f"{path}: target column {target!r} has class(es) with fewer than 2 rows: {', '.join(rare)}; "
                "add rows, merge or drop those classes (or use data.task: regression for a numeric target)"
            )

    x_train, x_test, y_train, y_test = split(
        x, y, task=task, test_size=test_size, seed=seed, source=str(path)
    )
    return Dataset(
        name="csv",
        task=task,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        n_classes=n_classes,
        is_image=False,
        feature_names=tuple(features),
        class_names=class_names,
    )
