"""The dataset a study spec names, with errors attributed to the spec like spec errors are."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpo.data._dataset import Dataset
from hpo.data._registry import load_dataset
from hpo.errors import DataError

if TYPE_CHECKING:
    from hpo.spec import Spec


def load_spec_dataset(spec: Spec) -> Dataset:
    """Load the dataset of ``spec`` (its ``data:`` section, split with ``search.seed``).

    A ``data.factory`` is imported and called with ``data.args`` here (its arrays checked, every class
    needing ``cv.folds`` training examples); an ``npz`` is checked the same way.
    Returns the :class:`Dataset`. Raises :class:`DataError` rendered as
    ``SPEC FILE: data.KEY: PROBLEM (data.path 'RAW' is RESOLVED)``: the spec file (when the
    spec was read from one), the key to change (``data.path`` unless the problem is the
    target column or task) and where a relative ``data.path`` points from this folder.
    """
    d = spec.data
    try:
        if d.factory is not None:
            from hpo.data._factory import load_factory_dataset

            return load_factory_dataset(d.factory, dict(d.args), spec_path=spec.path, task=spec.task,
                                        test_size=d.test_size, seed=spec.search.seed, folds=spec.cv.folds,
                                        torch_datasets=spec.is_objective)
        return load_dataset(d.dataset, path=d.path, target=d.target, task=d.task, test_size=d.test_size,
                            download=d.download, seed=spec.search.seed, folds=spec.cv.folds)
    except DataError as exc:
        key = getattr(exc, "key", None) or ("data.path" if d.path else "data.dataset")
        where = ""
        if d.path:
            resolved = Path(d.path).expanduser().resolve()
            where = f" (data.path {d.path!r} is {resolved})" if str(resolved) != d.path else ""
        prefix = f"{spec.path}: " if spec.path else ""
        raise DataError(f"{prefix}{key}: {exc}{where}") from exc
