"""A data factory named by ``data.factory``: the user's function that returns the arrays.

Contract: ``load(**data.args)`` returns ``(x, y)``, ``(x_train, y_train, x_test, y_test)`` or a
dict with those keys (``x``/``x_train``, ``y``/``y_train``, ``x_test``, ``y_test``); the arrays
are checked by :func:`hpo.data._arrays.dataset_from_arrays`. For a user objective (``torch_datasets``)
the inputs may be ``torch.utils.data.Dataset`` objects with label arrays (:mod:`hpo.data._torch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpo.data._arrays import dataset_from_arrays
from hpo.data._checks import describe
from hpo.data._dataset import DataKeyError, Dataset
from hpo.data._torch import dataset_from_torch, is_torch_dataset
from hpo.errors import DataError

GROUP = "hpo.data"  # the entry-point group of installed data factories
_ALIASES = {"x": "x", "y": "y", "x_train": "x", "y_train": "y", "x_test": "x_test", "y_test": "y_test"}
_SHAPES = "(x, y), (x_train, y_train, x_test, y_test) or a dict with keys x, y[, x_test, y_test]"


def _parts(out: Any, source: str) -> dict[str, Any]:
    """The arrays of a factory's return value by name; DataError when its structure is not one of ``_SHAPES``."""
    if isinstance(out, dict):
        unknown = [str(k) for k in out if k not in _ALIASES]
        if unknown:
            raise DataError(f"{source}: returned a dict with unknown key(s) {', '.join(map(repr, unknown))}; "
                            f"it must return {_SHAPES}")
        parts: dict[str, Any] = {}
        for key, value in out.items():
            name = _ALIASES[key]
            if name in parts:
                raise DataError(f"{source}: returned a dict with both {name!r} and {key!r}; give one of them")
            parts[name] = value
        return parts
    if isinstance(out, (tuple, list)) and len(out) in (2, 4):
        return dict(zip(("x", "y", "x_test", "y_test"), out, strict=False))
    raise DataError(f"{source}: must return {_SHAPES} (got {describe(out)})")


def load_factory_dataset(target: str, args: dict[str, Any], *, spec_path: str | Path | None, task: str,
                         test_size: float, seed: int, folds: int | None = None, torch_datasets: bool = False) -> Dataset:
    """Import the factory ``target``, call it with ``args`` and check what it returns.

    Returns a :class:`Dataset` named ``target``; a test split is split off with ``test_size`` and
    ``seed`` (stratified for classification) when the factory returns none. Raises
    :class:`~hpo.data._dataset.DataKeyError` (key ``data.factory``) naming the factory for: a module that
    does not import, an exception inside the factory (its message), a return value of the wrong
    structure, and every array problem :func:`~hpo.data._arrays.dataset_from_arrays` finds.
    """
    from hpo.usercode import UserCodeError, load_target

    source = f"data factory {target}"
    try:
        fn = load_target(target, spec_path=spec_path, group=GROUP)
    except UserCodeError as exc:
        raise DataKeyError(str(exc), "data.factory") from None
    try:
        out = fn(**args)
    except Exception as exc:  # the user's code: its error, with its message, is the answer
        raise DataKeyError(f"{source} raised {type(exc).__name__}: {exc}", "data.factory") from None
    try:
        parts = _parts(out, source)
        if is_torch_dataset(parts.get("x")):
            if not torch_datasets:
                raise DataError(f"{source}: returned a torch Dataset, which only your own training step reads: "
                                "use objective: {function: ...} to train on it, or return arrays for model:")
            return dataset_from_torch(parts, name=target, source=source, task=task, test_size=test_size, seed=seed,
                                      folds=folds)
        return dataset_from_arrays(parts, name=target, source=source, task=task,
                                   test_size=test_size, seed=seed, folds=folds)
    except DataKeyError:
        raise
    except DataError as exc:
        raise DataKeyError(str(exc), "data.factory") from None
