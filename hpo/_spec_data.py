"""The ``data:`` rules of a spec: a named dataset (built-in or the user's file) or a data factory.

Part of :mod:`hpo.spec`. A ``data.factory`` is imported here, when the spec is loaded (only for a
spec that names one), and its ``data.args`` are checked against its signature; calling it is the
loader's job (:func:`hpo.data.load_spec_dataset`), so ``hpo validate`` never runs it.
"""

from __future__ import annotations

from typing import Any

from hpo._spec_space import closest

BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes", "mnist_5k")
USER_FILES = ("csv", "npz", "parquet")  # the user's own files: data.task says what they hold
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", *USER_FILES)
DOWNLOADABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100")
DATASETS = BUILTIN_DATASETS + FILE_DATASETS
IMAGE_DATASETS = ("digits", "mnist_5k", "mnist", "fashion_mnist", "cifar10", "cifar100")
TABULAR_DATASETS = ("iris", "wine", "breast_cancer", "diabetes", "csv", "parquet")  # npz and factories: either
REGRESSION_DATASETS = ("diabetes",)
TARGET_DATASETS = ("csv", "parquet")  # tables: data.target names the column to predict
GROUP = "hpo.data"  # the entry-point group of installed data factories
_FILE_WHAT = {"csv": "a CSV file", "npz": "an .npz file", "parquet": "a parquet file"}


def check_data(d: Any, problems: list, source_path: str | None) -> str:
    """Check the ``data:`` section ``d`` (a :class:`hpo.spec.DataSpec`); return the task.

    Problems go to ``problems`` as ``(key path, rule)``. A factory is imported (and its ``args``
    checked against its signature) only when the rest of the section is sound.
    """
    before = len(problems)
    if d.factory is not None:
        _check_factory_keys(d, problems)
    else:
        _check_dataset(d, problems)
    if d.factory is not None and len(problems) == before:
        _check_factory(d.factory, d.args, source_path, problems)
    return d.task or ("regression" if d.dataset in REGRESSION_DATASETS else "classification")


def _check_factory_keys(d: Any, problems: list) -> None:
    if d.dataset is not None:
        problems.append(("data.factory", f"give data.dataset or data.factory, not both (dataset is "
                         f"{d.dataset!r}): a factory returns the data itself"))
    if not d.factory.strip():
        problems.append(("data.factory", "must be 'module:attribute' (e.g. mydata:load) or an installed "
                         f"'{GROUP}' entry-point name (got {d.factory!r})"))
    if not d.task:
        problems.append(("data.task", "required with data.factory: classification or regression"))
    for key in ("path", "target"):
        if getattr(d, key) is not None:
            problems.append((f"data.{key}", f"not used with data.factory (the factory reads its own data); "
                             f"pass it in data.args instead (got {getattr(d, key)!r})"))
    if d.download:
        problems.append(("data.download", "not used with data.factory: only the built-in file sets download"))
    for key in d.args:
        if not isinstance(key, str) or not key.isidentifier():
            problems.append((f"data.args.{key}", "must be a Python keyword name (letters, digits, '_')"))


def _check_dataset(d: Any, problems: list) -> None:
    if d.dataset is None:
        problems.append(("data.dataset", f"required key is missing: one of {', '.join(DATASETS)}, or "
                         "data.factory: 'module:attribute' for your own data"))
        return
    if d.args:
        problems.append(("data.args", f"only with data.factory: the keyword arguments of your data function "
                         f"(dataset is {d.dataset})"))
    if d.dataset not in DATASETS:
        problems.append(("data.dataset", f"unknown dataset {d.dataset!r}; known: {', '.join(DATASETS)}"
                         f"{closest(d.dataset, DATASETS)}"))
    if d.dataset in FILE_DATASETS and not d.path:
        what = _FILE_WHAT.get(d.dataset, "a folder of its files")
        extra = f" ({what})" if d.dataset not in USER_FILES else f" ({what}; see data.task)"
        problems.append(("data.path", f"required for dataset {d.dataset}{extra}"))
    if d.dataset in BUILTIN_DATASETS and d.path:
        problems.append(("data.path", f"{d.dataset} is bundled with hpo's dependencies and takes no path "
                         f"(got {d.path!r})"))
    if d.download and d.dataset not in DOWNLOADABLE:
        problems.append(("data.download", f"only {', '.join(DOWNLOADABLE)} can be downloaded (dataset is "
                         f"{d.dataset})"))
    if d.dataset in USER_FILES:
        if d.dataset in TARGET_DATASETS and not d.target:
            problems.append(("data.target", f"required for {d.dataset}: the name of the target column"))
        if d.dataset == "npz" and d.target is not None:
            problems.append(("data.target", "only for csv and parquet: an npz holds the arrays x and y"))
        if not d.task:
            problems.append(("data.task", f"required for {d.dataset}: classification or regression"))
    else:
        for key in ("target", "task"):
            if getattr(d, key) is not None:
                only = ", ".join(TARGET_DATASETS if key == "target" else USER_FILES)
                problems.append((f"data.{key}", f"only for dataset {only} or a data.factory (dataset is "
                                 f"{d.dataset})"))


def _check_factory(target: str, args: dict[str, Any], source_path: str | None, problems: list) -> None:
    """Import ``target`` and check ``args`` against its signature (problems as ``data.factory``/``data.args.KEY``)."""
    from hpo.usercode import UserCodeError, check_kwargs, load_target

    try:
        fn = load_target(target, spec_path=source_path, group=GROUP)
    except UserCodeError as exc:
        problems.append(("data.factory", str(exc)))
        return
    for keyword, rule in check_kwargs(fn, {k: [v] for k, v in args.items()}):
        problems.append((f"data.args.{keyword}" if keyword else "data.factory", rule))
