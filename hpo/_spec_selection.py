"""The ``search:`` keys of what a study optimises: ``objectives`` (several metrics instead of
``metric``), ``select`` (which trial of the Pareto front is refit) and ``constraints``
(``"n_params <= 200000"``: parsed here, never evaluated). Part of :mod:`hpo.spec`; each check adds
``(key path, rule)`` problems and raises nothing.
"""

from __future__ import annotations

import math
import re
from typing import Any

from hpo._spec_space import closest
from hpo.metrics import METRICS
from hpo.selection import COSTS, Constraint, Objective

_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>|==|=)\s*(\S+)\s*$")
SELECT_RULES = ("first", "knee", "weighted")


def check_objectives(s: Any, task: str, problems: list) -> tuple[Objective, ...]:
    """``search.objectives``: the first a metric of the task (trials are pruned on it, per epoch), the
    others hpo's cost metrics (known at a trial's end); directions as the metrics have them."""
    where = "search.objectives"
    for key in ("metric", "direction"):
        if getattr(s, key) is not None:
            problems.append((f"search.{key}", "cannot be combined with search.objectives: give each objective's "
                             "metric (and direction) there, e.g. [accuracy, {metric: n_params, direction: "
                             "minimize}]"))
    items = s.objectives
    if len(items) < 2:
        problems.append((where, f"lists {len(items)} objective; a single-objective study sets search.metric instead"))
    task_metrics = [m for m, info in METRICS.items() if info.task == task]
    out: list[Objective] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if isinstance(item, dict):
            extra = [k for k in item if k not in ("metric", "direction")]
            if extra or "metric" not in item:
                problems.append((f"{at}.{extra[0]}" if extra else at, "an objective is a metric name or "
                                 "{metric: NAME, direction: maximize|minimize}"))
                continue
            metric, direction = item["metric"], item.get("direction")
        else:
            metric, direction = item, None
        if not isinstance(metric, str):
            problems.append((at, f"must be a metric name (got {metric!r})"))
            continue
        natural = METRICS[metric].direction if metric in METRICS else "minimize" if metric in COSTS else None
        if i == 0 and metric not in task_metrics:
            problems.append((at, f"the first objective is the one trials are scored, pruned and refit on: it must be "
                             f"a metric of the {task} task ({', '.join(task_metrics)}){closest(metric, task_metrics)}"))
            continue
        if i > 0 and metric not in COSTS:
            problems.append((at, f"the objectives after the first are hpo's cost metrics, measured once per trial: "
                             f"{', '.join(COSTS)}{closest(metric, list(COSTS))}"))
            continue
        if direction not in (None, "maximize", "minimize"):
            problems.append((f"{at}.direction", f"must be one of maximize, minimize (got {direction!r})"))
            continue
        if direction is not None and direction != natural:
            problems.append((f"{at}.direction", f"{metric} is better when {'higher' if natural == 'maximize' else 'lower'}: "
                             f"direction must be {natural} (got {direction})"))
            continue
        if any(o.metric == metric for o in out):
            problems.append((at, f"{metric} is listed twice; list each objective once"))
            continue
        out.append(Objective(metric, natural))  # type: ignore[arg-type]
    for key, value in (("stop", s.stop), ("warm_start", s.warm_start)):
        if value is not None:
            problems.append((f"search.{key}", "is for single-objective studies (it compares best values); remove it "
                             "or search.objectives"))
    if s.pruner == "hyperband":
        problems.append(("search.pruner", "hyperband cannot prune a multi-objective study (its brackets read the "
                         "study's single direction); use median or successive_halving, which prune on the first "
                         "objective"))
    if s.sampler == "cmaes":
        problems.append(("search.sampler", "cmaes optimises a single objective; use tpe, gp, nsga2 or random for "
                         "search.objectives"))
    return tuple(out)


def check_single(s: Any, problems: list) -> None:
    """The keys only a multi-objective study has."""
    if s.select is not None:
        problems.append(("search.select", "picks one trial of a Pareto front: it needs search.objectives"))
    if s.sampler == "nsga2":
        problems.append(("search.sampler", "nsga2 is a multi-objective sampler: list search.objectives, or use "
                         "tpe, gp or cmaes for one metric"))


def check_select(select: Any, n_objectives: int, problems: list) -> None:
    """``search.select``: ``first``, ``knee`` or ``{weighted: [one weight >= 0 per objective]}``."""
    where = "search.select"
    if select is None or select in ("first", "knee"):
        return
    if isinstance(select, dict) and set(select) == {"weighted"}:
        w = select["weighted"]
        if not isinstance(w, list) or len(w) != n_objectives or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in w):
            problems.append((f"{where}.weighted", f"must list {n_objectives} weights >= 0, one per objective in "
                             f"order (got {w!r})"))
        elif not any(w):
            problems.append((f"{where}.weighted", "needs at least one weight above 0"))
        return
    problems.append((where, f"must be first, knee or {{weighted: [w1, w2, ...]}} (got {select!r})"
                     f"{closest(select, SELECT_RULES) if isinstance(select, str) else ''}"))


def parse_constraints(raw: list[Any], metric: str, problems: list) -> tuple[Constraint, ...]:
    """``search.constraints``: each ``"METRIC <= NUMBER"`` or ``">="``, on the study's metric or a cost metric."""
    out = []
    known = [metric, *COSTS]
    for i, text in enumerate(raw):
        at = f"search.constraints[{i}]"
        m = _CONSTRAINT.match(text) if isinstance(text, str) else None
        if m is None:
            problems.append((at, f"must read METRIC <= NUMBER or METRIC >= NUMBER, e.g. \"n_params <= 200000\" "
                             f"(got {text!r})"))
            continue
        name, op, number = m.groups()
        if op not in ("<=", ">="):
            problems.append((at, f"the operator must be <= or >= (got {op!r}): Optuna counts a trial feasible when "
                             "its value is at or within the bound"))
            continue
        if name not in known:
            problems.append((at, f"{name!r} is not a metric a trial has; constrain {', '.join(known)}"
                             f"{closest(name, known)}"))
            continue
        try:
            bound = float(number)
        except ValueError:
            bound = math.nan
        if not math.isfinite(bound):
            problems.append((at, f"the bound must be a finite number (got {number!r})"))
            continue
        c = Constraint(name, op, bound)
        if any(o.key == c.key for o in out):
            problems.append((at, f"{c.key} is listed twice"))
            continue
        out.append(c)
    return tuple(out)
