"""Names of the built-in data sets and :func:`load_dataset`."""

from __future__ import annotations

import difflib
from pathlib import Path

from hpo.data._dataset import TASKS, Dataset, path_kind
from hpo.data._sklearn import SKLEARN_TASKS
from hpo.errors import DataError

DATASETS: tuple[str, ...] = (
    "digits",
    "iris",
    "wine",
    "breast_cancer",
    "diabetes",
    "mnist_5k",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "csv",
    "npz",
    "parquet",
)
#: Sets read from files under ``path`` (``csv``, ``npz``, ``parquet``: the file itself).
FILE_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100", "csv", "npz", "parquet")
#: The user's own files: their task is given by ``data.task``.
USER_FILES: tuple[str, ...] = ("csv", "npz", "parquet")
#: Sets that ``download=True`` can fetch into ``path``.
DOWNLOADABLE: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100")

_FIXED_TASKS: dict[str, str] = {
    **SKLEARN_TASKS,
    "mnist_5k": "classification",
    "mnist": "classification",
    "fashion_mnist": "classification",
    "cifar10": "classification",
    "cifar100": "classification",
}


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        close = difflib.get_close_matches(key, DATASETS, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}.{hint}")
    return key


def dataset_task(name: str, task: str | None = None) -> str:
    """Return the task (``"classification"`` or ``"regression"``) of data set ``name``.

    Built-in sets have a fixed task; ``task`` may repeat it but not contradict it.
    For the user's files (``csv``, ``npz``, ``parquet``) the given ``task`` is returned.
    Raises :class:`DataError` for an unknown name, an unknown task, a user's file without
    a task, or a task that contradicts a built-in set's.
    """
    key = _canonical(name)
    if task is not None and task not in TASKS:
        raise DataError(f"data.task must be 'classification' or 'regression' (got {task!r})")
    if key in USER_FILES:
        if task is None:
            raise DataError(f"dataset {key!r} needs data.task: classification or regression")
        return task
    fixed = _FIXED_TASKS[key]
    if task is not None and task != fixed:
        raise DataError(f"dataset {key!r} is a {fixed} set; set data.task to {fixed!r} or leave it out")
    return fixed


def _root(name: str, path: str | Path | None, download: bool) -> Path:
    if path is None:
        extra = " or where to download it" if download else ""
        dl = " (or data.download: true to fetch it)" if name in DOWNLOADABLE and not download else ""
        raise DataError(
            f"dataset {name!r} is read from files: set data.path to the folder holding them{extra}{dl}"
        )
    root = Path(path).expanduser()
    kind = path_kind(root)
    if kind not in ("a folder", "not found"):
        raise DataError(f"dataset {name!r} is read from a folder, but data.path {root} is {kind}; "
                        "set data.path to the folder holding its files")
    return root


def _ensure_files(name: str, root: Path, download: bool) -> None:
    from hpo.data._cifar import LAYOUTS, missing_cifar_files
    from hpo.data._idx import locate_idx_files

    def missing_files() -> list[str]:
        if name in LAYOUTS:
            return missing_cifar_files(name, root)
        return locate_idx_files(name, root)[1]

    missing = missing_files()
    if missing and download:
        from hpo.data._download import download as fetch

        fetch(name, root)
        missing = missing_files()
    if missing:
        hint = "" if download else " or data.download: true to fetch them"
        raise DataError(
            f"dataset {name!r}: missing in {root}: {', '.join(missing)}. "
            f"Set data.path to the folder holding them{hint}"
        )


def load_dataset(
    name: str,
    *,
    path: str | Path | None = None,
    target: str | None = None,
    task: str | None = None,
    test_size: float = 0.2,
    download: bool = False,
    seed: int = 0,
    folds: int | None = None,
) -> Dataset:
    """Load the data set ``name`` (one of :data:`DATASETS`) with its train/test split.

    ``path``: the folder of a file set (the CSV file for ``csv``). ``target``/``task``:
    the CSV's target column and task (for built-ins ``task`` may only repeat the fixed
    one). ``test_size``/``seed``: the stratified split of sets without an official test
    split (ignored otherwise). ``folds``: for ``npz``, every class needs that many training
    examples (checked with the file's other problems). ``download``: fetch and verify missing files of a
    :data:`DOWNLOADABLE` set into ``path`` (ignored for the others).
    Returns a :class:`Dataset`. Raises :class:`DataError` with a message that says what
    to change (unknown name, missing path or files, malformed files, bad CSV, failed
    download or checksum).
    """
    key = _canonical(name)
    resolved_task = dataset_task(key, task)
    if key in SKLEARN_TASKS:
        from hpo.data._sklearn import load_sklearn

        return load_sklearn(key, test_size=test_size, seed=seed)
    if key == "mnist_5k":
        from hpo.data._mnist5k import load_mnist_5k

        return load_mnist_5k(test_size=test_size, seed=seed)
    if key == "csv":
        from hpo.data._table import load_csv

        return load_csv(path, target=target, task=resolved_task, test_size=test_size, seed=seed)
    if key == "parquet":
        from hpo.data._table import load_parquet

        return load_parquet(path, target=target, task=resolved_task, test_size=test_size, seed=seed)
    if key == "npz":
        from hpo.data._arrays import load_npz

        return load_npz(path, task=resolved_task, test_size=test_size, seed=seed, folds=folds)

    root = _root(key, path, download)
    _ensure_files(key, root, download)
    if key in ("cifar10", "cifar100"):
        from hpo.data._cifar import load_cifar

        return load_cifar(key, root)
    from hpo.data._idx import load_idx_dataset

    return load_idx_dataset(key, root)
