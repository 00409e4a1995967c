"""The rules of a spec that span keys or sections, checked once every section is parsed: the metric
against the task and ``search.direction``, GPUs against ``execution.device``, the store URIs and
MLflow's name limits of ``tracking:``, parameters the task would ignore, and what grid search
needs. Part of :mod:`hpo.spec`; each check adds ``(key path, rule)`` problems and raises nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpo._spec_data import TABULAR_DATASETS
from hpo._spec_space import Choice, Fixed, Param, Range, check_grid_size, closest, key_path
from hpo.metrics import DEFAULT_METRIC, METRICS
from hpo.params import LOSSES
from hpo.store_uris import store_uri_problem

if TYPE_CHECKING:
    from hpo.spec import DataSpec, ExecutionSpec, SearchSpec, TrackingSpec

# MLflow's API takes 500 characters, but its SQL schema stores experiment names in a 256-character column,
# so a longer name works on sqlite and fails on PostgreSQL/MySQL: keep to what every store holds
MAX_EXPERIMENT_NAME = 256


def check_metric(s: SearchSpec, task: str, problems: list) -> tuple[str, str]:
    """The study's ``(metric, direction)``: ``search.metric`` (default: the task's) and its direction.

    Adds a problem for an unknown metric, one of another task, or a ``search.direction`` it contradicts.
    """
    metric = s.metric or DEFAULT_METRIC[task]
    if metric not in METRICS:
        problems.append(("search.metric", f"unknown metric {metric!r}; known: {', '.join(METRICS)}{closest(metric, list(METRICS))}"))
        direction = s.direction or "maximize"
    else:
        info = METRICS[metric]
        if info.task != task:
            fits = [m for m, i in METRICS.items() if i.task == task]
            problems.append(("search.metric", f"{metric} is a {info.task} metric but the task is {task}; use one of {', '.join(fits)}"))
        direction = s.direction or info.direction
        if s.direction and s.direction != info.direction:
            problems.append(("search.direction", f"{metric} is better when {'higher' if info.direction == 'maximize' else 'lower'}: direction must be {info.direction} (got {s.direction})"))
    return metric, direction


def check_execution(ex: ExecutionSpec, problems: list) -> None:
    """GPU shares that ``execution.device`` or the whole-GPU rule refuses."""
    if ex.gpus_per_trial > 0 and ex.device == "cpu":
        problems.append(("execution.gpus_per_trial", f"asks for GPUs but execution.device is cpu (got {ex.gpus_per_trial})"))
    if ex.gpus_per_trial > 1 and ex.gpus_per_trial != int(ex.gpus_per_trial):
        problems.append(("execution.gpus_per_trial", f"above 1 must be a whole number of GPUs (got {ex.gpus_per_trial})"))


def check_tracking(t: TrackingSpec, problems: list) -> None:
    """The store rules (schemes, in-memory sqlite, drivers, sqlite folders) and MLflow's name limits."""
    for key, value, kind in (("uri", t.uri, "tracking"), ("storage", t.storage, "storage")):
        rule = store_uri_problem(value, kind) if value is not None else None  # type: ignore[arg-type]
        if rule:
            problems.append((f"tracking.{key}", rule))
    if t.experiment is not None:
        if not t.experiment.strip():
            problems.append(("tracking.experiment", "must not be empty; leave it out to use the study name"))
        elif len(t.experiment) > MAX_EXPERIMENT_NAME:
            problems.append(("tracking.experiment", f"is {len(t.experiment)} characters; MLflow stores at most "
                             f"{MAX_EXPERIMENT_NAME}: shorten it"))


def check_ignored_params(params: dict[str, Any], task: str, d: DataSpec, problems: list) -> None:
    """Keys the trainer would silently ignore: say so rather than spend trials on them."""
    if "label_smoothing" in params and task == "regression":
        problems.append(("params.label_smoothing", "has no effect on a regression task (it smooths "
                         "classification targets); remove this key"))
    if "augment" in params and d.dataset in TABULAR_DATASETS:
        problems.append(("params.augment", f"has no effect on tabular data ({d.dataset}): augment crops and "
                         "flips images; remove this key"))


# schedule parameters -> the scheduler that reads them
_SCHEDULE_PARAMS = {"cyclic_ratio": "cyclic", "cycle_epochs": "cyclic", "restart_epochs": "sgdr", "restart_mult": "sgdr"}


def _values(space: list[Param], name: str, default: Any) -> tuple[Any, ...] | None:
    """Every value parameter ``name`` can take in ``space`` (its default when the space leaves it out);
    ``None`` for a range."""
    for p in space:
        if p.name == name:
            return (p.value,) if isinstance(p, Fixed) else p.choices if isinstance(p, Choice) else None
    return (default,)


def check_training_choices(space: list[Param], task: str, problems: list) -> None:
    """The loss against the task, and parameters that the chosen loss or schedule never reads."""
    given = {p.name for p in space}
    losses = _values(space, "loss", LOSSES[task][0]) or ()
    other = "regression" if task == "classification" else "classification"
    for loss in losses:
        if loss in LOSSES[other]:
            problems.append(("params.loss", f"{loss} is a {other} loss but the task is {task}; use one of "
                             f"{', '.join(LOSSES[task])}"))
    if "label_smoothing" in given and task == "classification" and "cross_entropy" not in losses:
        problems.append(("params.label_smoothing", f"applies to loss cross_entropy only (loss is {', '.join(losses)}); "
                         "remove this key or use loss: cross_entropy"))
    schedulers = _values(space, "scheduler", "constant") or ()
    for name, scheduler in _SCHEDULE_PARAMS.items():
        if name in given and scheduler not in schedulers:
            problems.append((f"params.{name}", f"has no effect unless scheduler is {scheduler} (scheduler is "
                             f"{', '.join(schedulers)}); remove this key or set scheduler: {scheduler}"))


def check_budget(s: SearchSpec, space: list[Param], problems: list) -> None:
    """What the sampler needs: a finite, unconditional grid within its limit, or ``search.n_trials``."""
    n_trials = s.n_trials
    if s.sampler == "grid":
        for p in space:
            if isinstance(p, Range) and not p.is_int and p.step is None:
                problems.append((key_path(p.name), "grid search needs a finite grid: give this float range a step, or list the values"))
            if isinstance(p, Range) and p.log:
                problems.append((key_path(p.name), "grid search cannot use log: true; list the values instead"))
            if p.when:
                problems.append((f"{key_path(p.name)}.when", "grid search does not support conditional parameters; use sampler random or tpe, or list the combinations as separate specs"))
        check_grid_size(space, problems)
    elif n_trials is None:
        problems.append(("search.n_trials", f"required for sampler {s.sampler}: how many trials to run"))
