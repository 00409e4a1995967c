"""What a study optimises and which trial it keeps: its objectives (one metric, or several with
``search.objectives``), hpo's cost metrics, ``search.constraints``, the Pareto front and the rule
(``search.select``) that picks the one trial to refit.

Torch-free and Optuna-light: the driver, the read-side CLI and the report use it. Trials are
Optuna ``FrozenTrial`` objects; a trial is feasible when every constraint value Optuna stores for it
(``Trial.set_constraint``: zero or less is met) is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# hpo's cost metrics: measured for every complete trial by the worker (hpo.costs), known only at its end
COSTS: dict[str, str] = {
    "n_params": "parameters of one fold model",
    "inference_ms": "milliseconds per example, a batch of 256, on the trial's device after training",
    "train_seconds": "seconds the trial trained for (all its folds)",
    "peak_memory_mb": "peak memory the trial added (CUDA: allocated on its GPU; CPU: the process's resident set)",
}
FEASIBLE_ATTR = "hpo.feasible"  # on an Optuna trial when the study has constraints (its run: FEASIBLE_TAG)


@dataclass(frozen=True)
class Objective:
    """One objective: a metric and its direction."""

    metric: str
    direction: str  # "maximize" | "minimize"


@dataclass(frozen=True)
class Constraint:
    """``metric <= bound`` or ``metric >= bound`` (``search.constraints``)."""

    metric: str
    op: str  # "<=" | ">="
    bound: float

    @property
    def key(self) -> str:
        """The constraint's name in Optuna and in messages: ``n_params <= 200000``."""
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """Optuna's constraint value: zero or less when ``value`` meets the constraint."""
        return value - self.bound if self.op == "<=" else self.bound - value


def trial_values(objectives: tuple[Objective, ...], value: float | None, costs: dict[str, float]) -> list[float] | None:
    """The values to tell Optuna for a complete trial: the first objective's CV ``value``, then each cost
    objective from ``costs``; None when one is missing or not finite (the trial then fails)."""
    out = [value] + [costs.get(o.metric) for o in objectives[1:]]
    if any(v is None or not math.isfinite(v) for v in out):
        return None
    return [float(v) for v in out]  # type: ignore[arg-type]


def constraint_values(constraints: tuple[Constraint, ...], metric: str, value: float | None,
                      costs: dict[str, float]) -> dict[str, float]:
    """Each constraint's Optuna value (``key -> violation``) for a trial with CV ``value`` of ``metric``."""
    out = {}
    for c in constraints:
        v = value if c.metric == metric else costs.get(c.metric)
        out[c.key] = c.violation(v) if v is not None and math.isfinite(v) else math.inf
    return out


def objective_names(study: Any) -> list[str]:
    """A study's objectives by name (Optuna's metric names, which hpo sets), else ``value``, ``value 1``, ..."""
    names = study.metric_names
    return list(names) if names else ["value"] + [f"value {i}" for i in range(1, len(study.directions))]


def first_value(trial: Any) -> float | None:
    """A trial's value on its study's first objective (``FrozenTrial.value`` refuses several), or None."""
    values = trial.values
    return float(values[0]) if values else None


def is_feasible(trial: Any) -> bool:
    """Whether ``trial`` meets every constraint Optuna stores for it (true when it has none)."""
    return all(v <= 0.0 for v in trial.constraints.values())


def front(study: Any) -> list[Any]:
    """The feasible Pareto front of ``study`` (its best trial, for one objective), by trial number."""
    try:
        trials = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    except ValueError:
        return []
    return sorted(trials, key=lambda t: t.number)


def _normalised(trials: list[Any], directions: list[str]) -> list[list[float]]:
    """Each trial's objective values scaled to [0, 1] over ``trials``, 0 the best: "lower is better" for all."""
    cols = []
    for i, d in enumerate(directions):
        vals = [t.values[i] for t in trials]
        lo, hi = min(vals), max(vals)
        span = hi - lo
        col = [0.0 if span == 0 else (v - lo) / span for v in vals]
        cols.append(col if d == "minimize" else [1.0 - c for c in col])
    return [list(row) for row in zip(*cols, strict=True)]


def select(trials: list[Any], directions: list[str], rule: Any) -> Any:
    """The trial of ``trials`` (a Pareto front) that ``rule`` picks: ``first`` (best first objective),
    ``knee`` (closest to the ideal point, every objective scaled to [0, 1] over the front) or
    ``{"weighted": [w1, ...]}`` (lowest weighted sum of the scaled objectives). Ties: the lower number."""
    if rule == "first" or len(trials) == 1:
        sign = -1.0 if directions[0] == "maximize" else 1.0
        return min(trials, key=lambda t: (sign * t.values[0], t.number))
    scaled = _normalised(trials, directions)
    if rule == "knee":
        score = [math.sqrt(sum(c * c for c in row)) for row in scaled]
    else:
        weights = rule["weighted"]
        score = [sum(w * c for w, c in zip(weights, row, strict=True)) for row in scaled]
    return min(zip(score, trials, strict=True), key=lambda st: (st[0], st[1].number))[1]


def describe_rule(rule: Any) -> str:
    """``first``, ``knee`` or ``weighted [0.7, 0.3]``: how the summary and ``hpo.select`` name a rule."""
    return rule if isinstance(rule, str) else f"weighted {list(rule['weighted'])}"


def describe_goal(spec: Any) -> str:
    """What a study optimises, for ``hpo validate`` and the progress header: ``metric accuracy (maximize)``,
    or its objectives and select rule; its constraints after."""
    if spec.is_multi:
        goal = ("objectives " + ", ".join(f"{o.metric} ({o.direction})" for o in spec.objectives)
                + f", select {describe_rule(spec.search.select or 'first')}")
    else:
        goal = f"metric {spec.metric} ({spec.direction})"
    if spec.constraints:
        goal += ", constraints " + "; ".join(c.key for c in spec.constraints)
    return goal


def chosen(study: Any, spec: Any, members: list[Any] | None = None) -> tuple[Any | None, str]:
    """The trial to refit and why: the best feasible trial (one objective), or the one ``search.select``
    picks from the feasible Pareto front (``members``, when already computed); ``(None, why)`` when there
    is none."""
    from optuna.trial import TrialState

    trials = front(study) if members is None else members
    if not trials:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            return None, (f"none of the {len(complete)} complete trials meets search.constraints "
                          f"({'; '.join(c.key for c in spec.constraints)})")
        return None, "no trial completed"
    if not spec.is_multi:
        return trials[0], "best"
    rule = spec.search.select or "first"
    best = select(trials, [o.direction for o in spec.objectives], rule)
    return best, f"{describe_rule(rule)}: trial #{best.number} of a Pareto front of {len(trials)}"
