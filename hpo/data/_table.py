"""A user's own table from a CSV or parquet file: numeric features plus one target column."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import numpy as np

from hpo.data._checks import MIN_ROWS, check_classes, check_rows, encode_labels, user_file
from hpo.data._dataset import DataKeyError, Dataset
from hpo.data._split import split
from hpo.errors import DataError

# how a row of each format is pointed at: CSV by its file line (the header is line 1), parquet by its row (from 1)
_WHERE = {"csv": ("line", 2), "parquet": ("row", 1)}


def _rows(index: Any, fmt: str = "csv", limit: int = 5) -> str:
    """Line (CSV) or row (parquet) numbers of the first few rows in ``index``."""
    offset = _WHERE[fmt][1]
    lines = [str(int(i) + offset) for i in list(index)[:limit]]
    more = f" (and {len(index) - limit} more)" if len(index) > limit else ""
    return ", ".join(lines) + more


def load_parquet(
    path: str | Path | None, *, target: str | None, task: str | None, test_size: float, seed: int
) -> Dataset:
    """Load a parquet file of numeric features plus one ``target`` column and split it; see :func:`load_csv`.

    Raises :class:`DataError` for the same problems as :func:`load_csv`, for a file that is not
    parquet, and when neither pyarrow nor fastparquet (pandas' parquet engines) is installed.
    """
    import pandas as pd

    path = user_file(path, name="parquet", label="parquet", task=task)
    try:
        df = pd.read_parquet(path)
    except ImportError:  # pandas reads parquet through an optional engine
        raise DataError(f"{path}: reading parquet needs pyarrow or fastparquet and neither is installed: "
                        "pip install pyarrow") from None
    except Exception as exc:  # the engines raise their own types for a damaged or foreign file
        raise DataError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})") from None
    df = df.reset_index(drop=True)  # a stored index would name rows by its labels, not their position
    return _from_frame(df, path, "parquet", target=target, task=task, test_size=test_size, seed=seed)


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

    path = user_file(path, name="csv", label="CSV", task=task)
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file is empty; it needs a header row and at least {MIN_ROWS} rows"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot parse as CSV ({exc}); save it as comma-separated UTF-8") from None
    return _from_frame(df, path, "csv", target=target, task=task, test_size=test_size, seed=seed)


def _from_frame(df: Any, path: Path, fmt: str, *, target: str | None, task: str, test_size: float,
                seed: int) -> Dataset:
    """The checks and the split shared by CSV and parquet tables (``fmt`` names the rows in messages)."""
    import pandas as pd

    word = _WHERE[fmt][0]
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
    check_rows(len(df), str(path))
    features = [c for c in columns if c != target]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}; add input columns")

    na = df.isna()
    for column in columns:
        bad = df.index[na[column].to_numpy()]
        if len(bad):
            raise DataError(
                f"{path}: column {column!r} has {len(bad)} empty or NaN value(s), at {word}(s) {_rows(bad, fmt)}; "
                "fill them in or drop those rows"
            )

    text_columns = []  # (column, first bad index): every non-numeric feature is named, not just the first
    for column in features:
        series = df[column]
        if not pd.api.types.is_numeric_dtype(series):
            numeric = pd.to_numeric(series, errors="coerce")
            bad = series.index[numeric.isna().to_numpy()]
            if not len(bad):  # e.g. numbers pandas kept as text: all convert cleanly
                df[column] = numeric
                continue
            text_columns.append((column, bad[:1]))
    if text_columns:
        column, first = text_columns[0]
        example = f"e.g. {df[column].loc[first[0]]!r} at {word} {_rows(first, fmt)}"
        if len(text_columns) == 1:
            what = f"feature column {column!r} is not numeric ({example})"
        else:
            names = ", ".join(repr(c) for c, _ in text_columns)
            what = f"feature columns {names} are not numeric ({example} of {column!r})"
        raise DataError(f"{path}: {what}; features must be numbers: encode them (e.g. one-hot) or drop the "
                        "column(s)")

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
        y, class_names = encode_labels(y_raw.to_numpy())
        n_classes = len(class_names)
        check_classes(y, class_names, source=str(path), subject=f"target column {target!r}")

    x_train, x_test, y_train, y_test = split(
        x, y, task=task, test_size=test_size, seed=seed, source=str(path)
    )
    return Dataset(
        name=fmt,
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
