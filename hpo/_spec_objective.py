"""The ``objective:`` section of a spec: the user's own training step (:mod:`hpo.objective`).

``objective: {function: "module:attr", metric: NAME, direction: maximize|minimize, evaluate: "module:attr"}``
names a function ``fit_fold(params, fold, ctx) -> dict`` that trains one fold and the metric it reports.
It replaces ``model:`` (and the built-in training table of ``params:``, which becomes free-form).
Part of :mod:`hpo.spec`; the functions are imported (never called) when the spec is loaded, to check
that they exist and take the arguments hpo passes them.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from hpo.metrics import METRICS

GROUP = "hpo.objectives"  # the entry-point group of installed objective functions
_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$")
FUNCTION_ARGS = ("params", "fold", "ctx")
EVALUATE_ARGS = ("model", "test")
# keys of a spec that mean nothing with a user objective: it trains its own model with its own loop
_NOT_WITH_OBJECTIVE = {
    "search.metric": "the objective reports its own metric: set objective.metric instead",
    "search.direction": "set objective.direction instead",
}


def known_direction(metric: str) -> str | None:
    """The natural direction of ``metric`` when hpo knows it (``f1_macro`` or ``val_f1_macro``), else None."""
    name = metric[4:] if metric.startswith("val_") else metric
    info = METRICS.get(name) or METRICS.get(metric)
    return info.direction if info else None


def check_objective(obj: Any, *, has_model: bool, search: Any, pack_folds: Any, source_path: str | None,
                    problems: list) -> tuple[str, str]:
    """Check the ``objective:`` section ``obj`` (a :class:`hpo.spec.ObjectiveSpec`); return (metric, direction).

    Problems go to ``problems`` as ``(key path, rule)``: ``model:`` beside it, search keys it replaces,
    a metric name MLflow cannot store or whose direction is unknown, and functions that cannot be
    imported or do not take ``(params, fold, ctx)`` / ``(model, test)``.
    """
    if has_model:
        problems.append(("model", "not used with objective: (your function builds and trains its own model); "
                         "remove model:, or remove objective: to train hpo's built-in model"))
    for key, rule in _NOT_WITH_OBJECTIVE.items():
        section, name = key.split(".")
        if getattr(search, name) is not None:
            problems.append((key, rule))
    if pack_folds is True:
        problems.append(("execution.pack_folds", "cannot be true with objective: your function trains each fold "
                         "itself; remove the key"))
    metric = obj.metric
    direction = obj.direction or known_direction(metric) or "maximize"
    if not _METRIC_NAME.match(metric) or metric.startswith("fold"):
        problems.append(("objective.metric", "must be a metric name of letters, digits, '_', '.', '-' (up to 200, "
                         f"not starting with 'fold', which names the per-fold curves) (got {metric!r})"))
    elif obj.direction is None and known_direction(metric) is None:
        problems.append(("objective.direction", f"required: {metric!r} is not a metric hpo knows "
                         f"({', '.join(METRICS)}), so say whether higher is better: maximize or minimize"))
    elif obj.direction is not None and known_direction(metric) not in (None, obj.direction):
        natural = known_direction(metric)
        problems.append(("objective.direction", f"{metric.removeprefix('val_')} is better when "
                         f"{'higher' if natural == 'maximize' else 'lower'}: direction must be {natural} "
                         f"(got {obj.direction}), or name your own metric otherwise"))
    _check_function(obj.function, "objective.function", FUNCTION_ARGS, source_path, problems)
    if obj.evaluate is not None:
        _check_function(obj.evaluate, "objective.evaluate", EVALUATE_ARGS, source_path, problems)
    return metric, direction


def _check_function(target: str, key: str, args: tuple[str, ...], source_path: str | None, problems: list) -> None:
    """Import ``target`` and check that it can be called with ``len(args)`` positional arguments."""
    from hpo.usercode import UserCodeError, load_target

    if not target.strip():
        problems.append((key, f"must be 'module:attribute' (e.g. mytrain:fit_fold) or an installed '{GROUP}' "
                         f"entry-point name (got {target!r})"))
        return
    try:
        fn = load_target(target, spec_path=source_path, group=GROUP)
    except UserCodeError as exc:
        problems.append((key, str(exc)))
        return
    wanted = ", ".join(args)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: calling it will tell
    try:
        sig.bind(*args)
    except TypeError as exc:
        problems.append((key, f"{target} must take {len(args)} positional arguments ({wanted}), but its signature "
                         f"is {target.split(':')[-1]}{sig}: {exc}"))
