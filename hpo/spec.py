"""YAML study spec -> validated, frozen :class:`Spec`.

Validation happens once, here, before anything is trained or written. Every problem is
reported as ``FILE: KEY.PATH: RULE (got VALUE)``. This module imports neither torch nor
MLflow, so ``hpo validate`` is instant. Reading the file lives in :mod:`hpo._spec_yaml`, the
``params:`` rules in :mod:`hpo._spec_space`, the rules that span sections (metric, GPUs, stores,
grid search) in :mod:`hpo._spec_rules`, the store URI rules in :mod:`hpo.store_uris`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from hpo._spec_data import DATASETS, TABULAR_DATASETS, check_data
from hpo._spec_model import check_factory, parse_model
from hpo._spec_objective import check_objective
from hpo._spec_problems import MAX_SEED, pydantic_problems
from hpo._spec_rules import (
    MAX_EXPERIMENT_NAME,
    check_budget,
    check_execution,
    check_ignored_params,
    check_metric,
    check_tracking,
    check_training_choices,
)
from hpo._spec_search import (
    check_enqueue,
    check_sampler,
    check_stop,
    check_warm_start,
)
from hpo._spec_sections import (  # the sections, re-exported
    DEFAULT_TRACKING_URI,
    CVSpec,
    DataSpec,
    ExecutionSpec,
    ObjectiveSpec,
    SearchSpec,
    TrackingSpec,
    _RawSpec,
    _Section,
)
from hpo._spec_selection import check_objectives, check_select, check_single, parse_constraints
from hpo._spec_space import (
    MAX_GRID_POINTS,
    Choice,
    Fixed,
    Param,
    Range,
    parse_params,
    same_value,
)
from hpo._spec_tracking import NotifySpec, PromoteSpec, check_notify, check_registry
from hpo._spec_yaml import MAX_SPEC_BYTES, SpecLoader, file_kind, read_limited
from hpo.errors import SpecError
from hpo.params import MODEL_DEFAULTS, MODELS, default_value, param_names
from hpo.selection import Constraint, Objective
from hpo.store_uris import store_uri_problem


@dataclass(frozen=True)
class Spec:
    """A validated study spec. Every default is filled in; nothing here is optional."""

    name: str
    data: DataSpec
    model: str  # the built-in name, the model factory's target as written, or objective.function
    search: SearchSpec
    cv: CVSpec
    execution: ExecutionSpec
    tracking: TrackingSpec
    space: tuple[Param, ...]
    task: str
    metric: str
    direction: str
    n_trials: int
    source: str = ""  # the YAML text as given
    path: str | None = None  # where it was read from
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    objective: ObjectiveSpec | None = None  # the user's training step (then model is objective.function)
    objectives: tuple[Objective, ...] = ()  # what the study optimises: (metric, direction) first, then costs
    constraints: tuple[Constraint, ...] = ()

    @property
    def cost_metrics(self) -> list[str]:
        """hpo's cost metrics the study's objectives and constraints name."""
        names = [o.metric for o in self.objectives[1:]] + [c.metric for c in self.constraints]
        return [m for m in dict.fromkeys(names) if m != self.metric]

    @property
    def is_multi(self) -> bool:
        """Whether the study has several objectives (``search.objectives``): a Pareto front, not one best."""
        return len(self.objectives) > 1

    @property
    def experiment(self) -> str:
        """MLflow experiment name (``tracking.experiment`` or the study name)."""
        return self.tracking.experiment or self.name

    @property
    def is_factory_model(self) -> bool:
        """Whether ``model`` is a model factory (user code: ``module:attr`` or an entry point), not a built-in."""
        return self.objective is None and self.model not in MODELS

    @property
    def is_objective(self) -> bool:
        """Whether trials run the user's own training step (``objective:``) instead of hpo's training."""
        return self.objective is not None

    def user_code(self) -> list[tuple[str, str, str]]:
        """``(spec key, target, entry-point group)`` of every function of the user's that the spec names
        (model factory, objective and its evaluate, data factory): what is hashed, shipped and imported."""
        out = []
        if self.is_factory_model:
            out.append(("model.factory", self.model, "hpo.models"))
        if self.objective is not None:
            out.append(("objective.function", self.objective.function, "hpo.objectives"))
            if self.objective.evaluate:
                out.append(("objective.evaluate", self.objective.evaluate, "hpo.objectives"))
        if self.data.factory:
            out.append(("data.factory", self.data.factory, "hpo.data"))
        return out

    def defaults(self) -> dict[str, Any]:
        """The value of every known parameter a spec leaves out: the training table's defaults (none with
        a user objective, whose ``params:`` are its own)."""
        if self.objective is not None:
            return {}
        return {name: default_value(name, self.model, self.task) for name in param_names(self.model)}

    @property
    def registered_model(self) -> str:
        """The registry's name of the refit model (``tracking.registered_model``, default the study name)."""
        return self.tracking.registered_model or self.name

    @property
    def curve_key(self) -> str:
        """The per-epoch fold-mean metric that trials report and the pruner reads: ``val_<metric>`` for
        hpo's training, the metric's own name for a user objective (it names what it reports)."""
        return self.metric if self.objective is not None else f"val_{self.metric}"

    @property
    def spec_hash(self) -> str:
        """Short SHA-256 of the YAML text: ties runs to the exact spec."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:12]

    @property
    def grid_size(self) -> int | None:
        """Number of grid points, or ``None`` when the space is not a grid."""
        size = 1
        for p in self.space:
            if isinstance(p, Choice):
                size *= len(p.choices)
            elif isinstance(p, Range):
                if not p.is_int and p.step is None:
                    return None
                size *= p.size
        return size

    def fixed_params(self) -> dict[str, Any]:
        """Every parameter's value where it does not vary: given fixed values and defaults."""
        out = self.defaults()
        out.update({p.name: p.value for p in self.space if isinstance(p, Fixed)})
        return out

    def replace(self, **changes: Any) -> Spec:
        """Return a copy with top-level fields or ``search``/``tracking``/``execution`` keys changed.

        Keys like ``n_trials``, ``seed``, ``tracking_uri``, ``executor`` are what the CLI overrides.
        Overridden section keys obey the spec's rules: raises :class:`SpecError` naming the key
        (``search.seed``, ``tracking.uri``, ...) and the flag that set it.
        """
        import dataclasses

        problems: list[tuple[str, str]] = []
        sections = {}
        for section, keys in _OVERRIDES.items():
            update = {field: changes.pop(flag) for flag, field in keys.items() if flag in changes}
            current = getattr(self, section)
            sections[section] = current if not update else _validated(section, current, update, problems)
        if problems:
            raise SpecError(problems, self.path)
        return dataclasses.replace(self, **sections, **changes)


# override -> section key; the CLI flag of an override is its name with dashes (tracking_uri: --tracking-uri)
_OVERRIDES: dict[str, dict[str, str]] = {
    "search": {"seed": "seed"},
    "tracking": {"tracking_uri": "uri"},
    "execution": {k: k for k in ("executor", "address", "max_concurrent_trials", "device")},
}


def _validated(section: str, current: _Section, update: dict[str, Any], problems: list) -> Any:
    """``current`` with ``update`` applied, validated like the YAML; problems are added to ``problems``."""
    flags = {field: flag for flag, field in _OVERRIDES[section].items()}
    try:
        new = type(current).model_validate({**current.model_dump(), **update})
    except ValidationError as exc:
        problems.extend((path, f"{rule} (from --{flags[path.split('.')[1]].replace('_', '-')})")
                        for path, rule in pydantic_problems(exc, _RawSpec, prefix=(section,)))
        return current
    if section == "tracking":
        rule = store_uri_problem(new.uri, "tracking")
        if rule:
            problems.append(("tracking.uri", f"{rule} (from --tracking-uri)"))
    return new


# --------------------------------------------------------------------------- loading
def load_spec(path: str | Path) -> Spec:
    """Read, parse and validate the spec at ``path``.

    Returns the frozen :class:`Spec`. Raises :class:`SpecError` naming the file, the key path
    and the rule of every problem found.
    """
    data = read_limited(Path(path))
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it
    except UnicodeDecodeError as exc:
        raise SpecError([("", f"cannot read spec: {exc}; save it as UTF-8 text")], str(path)) from None
    try:
        return parse_spec(text, source_path=str(path))
    except SpecError as exc:
        raise exc.with_file(str(path)) from None


def parse_spec(text: str, source_path: str | None = None) -> Spec:
    """Parse and validate spec YAML ``text``; see :func:`load_spec`."""
    try:
        raw = yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([("", f"not valid YAML{where}: {problem}")]) from None
    if not isinstance(raw, dict):
        raise SpecError([("", f"a spec must be a YAML mapping with keys name, data, model, ... (got {type(raw).__name__})")])
    try:
        parsed = _RawSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, _RawSpec)) from None
    spec = _resolve(parsed, raw, source_path)
    return _dc_replace(spec, source=text, path=source_path)


def _dc_replace(spec: Spec, **kw: Any) -> Spec:
    import dataclasses

    return dataclasses.replace(spec, **kw)


def _resolve(raw: _RawSpec, raw_dict: dict[str, Any], source_path: str | None = None) -> Spec:
    problems: list[tuple[str, str]] = []
    d = raw.data
    if raw.objective is not None:
        model, model_params, factory_key = raw.objective.function, {}, ""
    elif raw.model is None:
        problems.append(("model", f"required key is missing: a built-in model ({', '.join(MODELS)}), "
                         "{factory: 'module:attribute'}, or give objective: {function: 'module:attribute', metric: "
                         "...} to train with your own function"))
        model, model_params, factory_key = "mlp", {}, ""
    else:
        model, model_params, factory_key = parse_model(raw.model, problems)

    # data
    task = check_data(d, problems, source_path)  # a data.factory is imported here, its args checked

    if model in ("cnn", "resnet") and d.dataset in TABULAR_DATASETS:
        problems.append(("model", f"{model} needs image data; {d.dataset} is tabular: use model: mlp"))

    # search
    s = raw.search
    if raw.objective is not None:
        metric, direction = check_objective(raw.objective, has_model=raw.model is not None, search=s,
                                            pack_folds=raw.execution.pack_folds, source_path=source_path,
                                            problems=problems)
    elif s.objectives is not None:
        objectives = check_objectives(s, task, problems)
        metric, direction = (objectives[0].metric, objectives[0].direction) if objectives else ("accuracy", "maximize")
    else:
        metric, direction = check_metric(s, task, problems)
        if s.pruner == "wilcoxon":
            problems.append(("search.pruner", "wilcoxon compares trials fold by fold, which only a user objective "
                             "(objective:) does; hpo's training runs its folds in lockstep and reports their mean per "
                             "epoch: use median, successive_halving or hyperband"))
    if s.objectives is None:
        objectives = (Objective(metric, direction),)
        check_single(s, problems)
    elif raw.objective is not None:
        objectives = (Objective(metric, direction),)
        problems.append(("search.objectives", "a user objective (objective:) optimises its own metric; several "
                         "objectives need hpo's training (model:)"))
    check_select(s.select, len(objectives), problems)
    constraints = parse_constraints(s.constraints, metric, problems)
    if raw.objective is not None and any(c.metric != metric for c in constraints):
        problems.append(("search.constraints", f"a user objective reports {metric} only: hpo measures its cost "
                         "metrics in its own training; constrain the objective's metric"))
    check_execution(raw.execution, problems)
    check_tracking(raw.tracking, problems)
    check_registry(raw.tracking, task=task, metric=metric, direction=direction, objective=raw.objective is not None,
                   evaluate=bool(raw.objective and raw.objective.evaluate), problems=problems)
    check_notify(raw.tracking, problems)

    # params
    # a factory's keywords first (model.<keyword>), then the training parameters: one space, one grammar
    space = parse_params({**model_params, **raw.params}, model, problems, free=raw.objective is not None)
    if factory_key and not any(k == "model" or k.startswith("model.") for k, _ in problems):
        space = check_factory(model, factory_key, space, source_path, problems)  # imports the user's module
    if raw.objective is None:
        check_ignored_params(raw.params, task, d, problems)
        check_training_choices(space, task, problems)
    check_budget(s, space, problems)
    check_sampler(s.sampler, s.sampler_options, space, problems)
    check_enqueue(s.enqueue, s.sampler, space, {p.name: p.value for p in space if isinstance(p, Fixed)},
                  s.n_trials, problems)
    check_stop(s.stop, problems)
    check_warm_start(s.warm_start, raw.name, s.sampler, problems)
    n_trials = s.n_trials

    if problems:
        raise SpecError(problems)

    spec = Spec(
        name=raw.name, data=d, model=model, search=s, cv=raw.cv, execution=raw.execution,
        tracking=raw.tracking, space=tuple(space), task=task, metric=metric, direction=direction,
        n_trials=0, raw=raw_dict, objective=raw.objective, objectives=objectives, constraints=constraints,
    )
    if s.sampler == "grid":
        grid = spec.grid_size or 1
        n_trials = min(n_trials, grid) if n_trials else grid
    return _dc_replace(spec, n_trials=int(n_trials))


__all__ = [
    "Spec", "DataSpec", "ObjectiveSpec", "SearchSpec", "CVSpec", "ExecutionSpec", "TrackingSpec",
    "Fixed", "Range", "Choice", "Param", "load_spec", "parse_spec", "DATASETS", "MODEL_DEFAULTS",
    "MAX_SPEC_BYTES", "MAX_GRID_POINTS", "MAX_SEED", "MAX_EXPERIMENT_NAME", "DEFAULT_TRACKING_URI",
    "file_kind", "same_value", "NotifySpec", "PromoteSpec",
]
