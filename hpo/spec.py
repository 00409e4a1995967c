"""YAML study spec -> validated, frozen :class:`Spec`.

Validation happens once, here, before anything is trained or written. Every problem is
reported as ``FILE: KEY.PATH: RULE (got VALUE)``. This module imports neither torch nor
MLflow, so ``hpo validate`` is instant.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpo.errors import SpecError
from hpo.metrics import DEFAULT_METRIC, METRICS
from hpo.params import MODEL_DEFAULTS, PARAMS, check_value, default_value
from hpo.store_uris import store_uri_problem

MAX_SPEC_BYTES = 1 << 20  # a study spec is a few hundred bytes; refuse anything absurd
MAX_GRID_POINTS = 100_000  # a grid search tries every point: above this it would not finish, and Optuna's grid sampler holds them all
MAX_SEED = 2**32 - 1  # numpy's and the fold splitter's seeds are 32-bit
# MLflow's API takes 500 characters, but its SQL schema stores experiment names in a 256-character column,
# so a longer name works on sqlite and fails on PostgreSQL/MySQL: keep to what every store holds
MAX_EXPERIMENT_NAME = 256
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"

BUILTIN_DATASETS = ("digits", "iris", "wine", "breast_cancer", "diabetes", "mnist_5k")
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "csv")
DOWNLOADABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100")
DATASETS = BUILTIN_DATASETS + FILE_DATASETS
IMAGE_DATASETS = ("digits", "mnist_5k", "mnist", "fashion_mnist", "cifar10", "cifar100")
REGRESSION_DATASETS = ("diabetes",)


# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataSpec(_Section):
    """``data:`` — which dataset and how to split it."""

    dataset: str
    path: str | None = None
    target: str | None = None
    task: Literal["classification", "regression"] | None = None
    test_size: float = Field(0.2, gt=0, lt=1)
    download: bool = False


class SearchSpec(_Section):
    """``search:`` — sampler, budget, objective."""

    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    metric: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    max_failures: int | None = Field(None, ge=1)  # stop the study after this many failed trials (none = never)


class CVSpec(_Section):
    """``cv:`` — k-fold cross-validation."""

    folds: int = Field(5, ge=2)


class ExecutionSpec(_Section):
    """``execution:`` — where trials run."""

    executor: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: cluster address (ray://, host:port); none = a local Ray for this study
    max_concurrent_trials: int = Field(1, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)  # ray: CPUs each trial's worker holds
    gpus_per_trial: float = Field(0.0, ge=0)  # ray: GPU share per trial; 0.5 = two trials per GPU
    max_retries: int = Field(1, ge=0)  # ray: re-runs of a trial whose worker died
    # torch intra-op threads per trial; none = this machine's cores / max_concurrent_trials (local),
    # cpus_per_trial (ray)
    threads_per_trial: int | None = Field(None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrackingSpec(_Section):
    """``tracking:`` — the MLflow store."""

    uri: str = DEFAULT_TRACKING_URI
    experiment: str | None = None
    keep_checkpoints: int = Field(1, ge=0)
    report: bool = True  # draw the report plots onto the parent run at the end (hpo report NAME draws them later)
    # Optuna's storage (any SQLAlchemy URL); default: optuna.db beside a sqlite tracking store
    storage: str | None = None
    # seconds a tracking server may be unreachable mid-study before the study stops (writes wait meanwhile)
    outage_timeout: float = Field(300.0, gt=0)


class _RawSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
    data: DataSpec
    model: Literal["mlp", "cnn", "resnet"]
    search: SearchSpec = SearchSpec()
    cv: CVSpec = CVSpec()
    params: dict[str, Any] = Field(default_factory=dict)
    execution: ExecutionSpec = ExecutionSpec()
    tracking: TrackingSpec = TrackingSpec()


# --------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Fixed:
    """A parameter held at one value in every trial."""

    name: str
    value: Any
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True)
class Range:
    """A numeric range; both bounds inclusive (Optuna's convention, everywhere in hpo)."""

    name: str
    low: float
    high: float
    is_int: bool
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def size(self) -> int:
        """Number of grid points of a stepped (or integer) range, computed: a huge grid is never built."""
        if self.is_int:
            return (int(self.high) - int(self.low)) // int(self.step or 1) + 1
        span = (self.high - self.low) / (self.step if self.step is not None else 1)
        return int(math.floor(span + 1e-9)) + 1 if math.isfinite(span) else sys.maxsize

    def grid(self) -> list[Any]:
        """The grid points of a stepped (or integer) range. Raises ValueError above MAX_GRID_POINTS."""
        n = self.size
        if n > MAX_GRID_POINTS:
            raise ValueError(f"{self.name}: {n} grid points, more than MAX_GRID_POINTS={MAX_GRID_POINTS}")
        step = self.step if self.step is not None else 1
        return [self.low + i * step if self.is_int else round(self.low + i * step, 12) for i in range(n)]


@dataclass(frozen=True)
class Choice:
    """A categorical choice among listed values."""

    name: str
    choices: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()


Param = Fixed | Range | Choice


@dataclass(frozen=True)
class Spec:
    """A validated study spec. Every default is filled in; nothing here is optional."""

    name: str
    data: DataSpec
    model: str
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

    @property
    def experiment(self) -> str:
        """MLflow experiment name (``tracking.experiment`` or the study name)."""
        return self.tracking.experiment or self.name

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
        out = {name: default_value(name, self.model) for name in PARAMS}
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
                        for path, rule in _pydantic_problems(exc, prefix=(section,)))
        return current
    if section == "tracking":
        rule = store_uri_problem(new.uri, "tracking")
        if rule:
            problems.append(("tracking.uri", f"{rule} (from --tracking-uri)"))
    return new


# --------------------------------------------------------------------------- loading


class _NoAliasLoader(yaml.SafeLoader):
    """Safe loader that refuses anchors/aliases: they let a tiny file expand to gigabytes."""

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a spec; write the value out",
                event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"YAML anchors (&{event.anchor}) are not allowed in a spec; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "YAML merge keys (<<) are not allowed in a spec; write the merged keys out",
                    key_node.start_mark)
            if isinstance(key_node, yaml.SequenceNode | yaml.MappingNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain name, not a {kind}; write e.g. 'lr:' (a '?' or a "
                    "'[...]'/'{...}' before ':' makes the key itself a collection)", key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}: each key may appear once per mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-4 and 1.0e4 as strings, so `lr: 1e-4` would fail as "not a number".
_NoAliasLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_spec(path: str | Path) -> Spec:
    """Read, parse and validate the spec at ``path``.

    Returns the frozen :class:`Spec`. Raises :class:`SpecError` naming the file, the key path
    and the rule of every problem found.
    """
    data = _read_limited(Path(path))
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as text mode reads it
    except UnicodeDecodeError as exc:
        raise SpecError([("", f"cannot read spec: {exc}; save it as UTF-8 text")], str(path)) from None
    try:
        return parse_spec(text, source_path=str(path))
    except SpecError as exc:
        raise exc.with_file(str(path)) from None


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a FIFO (named pipe)", "a folder", ...; "a regular file")."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "a regular file")


def _read_limited(path: Path) -> bytes:
    """At most ``MAX_SPEC_BYTES + 1`` bytes of a regular file: ``st_size`` is 0 for a device and a FIFO
    blocks until someone writes, so both are refused rather than read."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise SpecError([("", f"cannot read spec: {path} is {file_kind(mode)}, not a regular file; "
                                  "give the path of a YAML file")], str(path))
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise SpecError([("", f"cannot read spec: {path} is {file_kind(mode)}, not a regular file")],
                                str(path))
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError([("", f"cannot read spec: {exc.strerror or exc}")], str(path)) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([("", f"spec is over {MAX_SPEC_BYTES} bytes; a spec must be under {MAX_SPEC_BYTES} bytes")],
                        str(path))
    return data


def parse_spec(text: str, source_path: str | None = None) -> Spec:
    """Parse and validate spec YAML ``text``; see :func:`load_spec`."""
    try:
        raw = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
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
        raise SpecError(_pydantic_problems(exc)) from None
    spec = _resolve(parsed, raw)
    return _dc_replace(spec, source=text, path=source_path)


def _dc_replace(spec: Spec, **kw: Any) -> Spec:
    import dataclasses

    return dataclasses.replace(spec, **kw)


def _closest(word: str, options: list[str] | tuple[str, ...]) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = _RawSpec
    for part in loc:
        fld = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(fld, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _pydantic_problems(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            parent = _model_at(loc[:-1])
            valid = list(parent.model_fields) if parent else []
            rule = f"unknown key; valid keys here: {', '.join(valid)}{_closest(loc[-1], valid)}"
        elif kind == "missing":
            rule = "required key is missing"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            options = re.findall(r"'([^']*)'", expected)
            rule = f"must be one of {', '.join(options)} (got {value!r}){_closest(value, options)}"
        elif kind == "string_pattern_mismatch" and path == "name":
            rule = f"must be 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit (got {value!r})"
        elif kind in ("model_type", "dict_type"):
            rule = f"must be a mapping of keys (got {type(value).__name__} {value!r})"
        elif path == "search.seed" and kind in ("greater_than_equal", "less_than_equal"):
            rule = f"must be an integer from 0 to {MAX_SEED} (seeds are 32-bit) (got {value!r})"
        else:
            msg = err["msg"]
            msg = msg[0].lower() + msg[1:] if msg else msg
            msg = msg.replace("input should be", "must be").replace("Input should be", "must be")
            rule = f"{msg} (got {value!r})"
        problems.append((path, rule))
    return problems


def _resolve(raw: _RawSpec, raw_dict: dict[str, Any]) -> Spec:
    problems: list[tuple[str, str]] = []
    d = raw.data

    # data
    if d.dataset not in DATASETS:
        problems.append(("data.dataset", f"unknown dataset {d.dataset!r}; known: {', '.join(DATASETS)}{_closest(d.dataset, DATASETS)}"))
    if d.dataset in FILE_DATASETS and not d.path:
        problems.append(("data.path", f"required for dataset {d.dataset} (a folder of its files{'' if d.dataset != 'csv' else '; a CSV file'})"))
    if d.dataset in BUILTIN_DATASETS and d.path:
        problems.append(("data.path", f"{d.dataset} is bundled with hpo's dependencies and takes no path (got {d.path!r})"))
    if d.download and d.dataset not in DOWNLOADABLE:
        problems.append(("data.download", f"only {', '.join(DOWNLOADABLE)} can be downloaded (dataset is {d.dataset})"))
    if d.dataset == "csv":
        if not d.target:
            problems.append(("data.target", "required for csv: the name of the target column"))
        if not d.task:
            problems.append(("data.task", "required for csv: classification or regression"))
    else:
        for key in ("target", "task"):
            if getattr(d, key) is not None:
                problems.append((f"data.{key}", f"only for dataset csv (dataset is {d.dataset})"))
    task = d.task or ("regression" if d.dataset in REGRESSION_DATASETS else "classification")

    if raw.model in ("cnn", "resnet") and d.dataset in DATASETS and d.dataset not in IMAGE_DATASETS:
        problems.append(("model", f"{raw.model} needs image data; {d.dataset} is tabular: use model: mlp"))

    # search
    s = raw.search
    metric = s.metric or DEFAULT_METRIC[task]
    if metric not in METRICS:
        problems.append(("search.metric", f"unknown metric {metric!r}; known: {', '.join(METRICS)}{_closest(metric, list(METRICS))}"))
        direction = s.direction or "maximize"
    else:
        info = METRICS[metric]
        if info.task != task:
            fits = [m for m, i in METRICS.items() if i.task == task]
            problems.append(("search.metric", f"{metric} is a {info.task} metric but the task is {task}; use one of {', '.join(fits)}"))
        direction = s.direction or info.direction
        if s.direction and s.direction != info.direction:
            problems.append(("search.direction", f"{metric} is better when {'higher' if info.direction == 'maximize' else 'lower'}: direction must be {info.direction} (got {s.direction})"))

    ex = raw.execution
    if ex.gpus_per_trial > 0 and ex.device == "cpu":
        problems.append(("execution.gpus_per_trial", f"asks for GPUs but execution.device is cpu (got {ex.gpus_per_trial})"))
    if ex.gpus_per_trial > 1 and ex.gpus_per_trial != int(ex.gpus_per_trial):
        problems.append(("execution.gpus_per_trial", f"above 1 must be a whole number of GPUs (got {ex.gpus_per_trial})"))

    _check_tracking(raw.tracking, problems)

    # params
    space = _parse_params(raw.params, raw.model, problems)
    # keys the trainer would silently ignore: say so rather than spend trials on them
    if "label_smoothing" in raw.params and task == "regression":
        problems.append(("params.label_smoothing", "has no effect on a regression task (it smooths "
                         "classification targets); remove this key"))
    if "augment" in raw.params and d.dataset in DATASETS and d.dataset not in IMAGE_DATASETS:
        problems.append(("params.augment", f"has no effect on tabular data ({d.dataset}): augment crops and "
                         "flips images; remove this key"))

    n_trials = s.n_trials
    if s.sampler == "grid":
        for p in space:
            if isinstance(p, Range) and not p.is_int and p.step is None:
                problems.append((f"params.{p.name}", "grid search needs a finite grid: give this float range a step, or list the values"))
            if isinstance(p, Range) and p.log:
                problems.append((f"params.{p.name}", "grid search cannot use log: true; list the values instead"))
            if p.when:
                problems.append((f"params.{p.name}.when", "grid search does not support conditional parameters; use sampler random or tpe, or list the combinations as separate specs"))
        _check_grid_size(space, problems)
    elif n_trials is None:
        problems.append(("search.n_trials", f"required for sampler {s.sampler}: how many trials to run"))

    if problems:
        raise SpecError(problems)

    spec = Spec(
        name=raw.name, data=d, model=raw.model, search=s, cv=raw.cv, execution=raw.execution,
        tracking=raw.tracking, space=tuple(space), task=task, metric=metric, direction=direction,
        n_trials=0, raw=raw_dict,
    )
    if s.sampler == "grid":
        grid = spec.grid_size or 1
        n_trials = min(n_trials, grid) if n_trials else grid
    return _dc_replace(spec, n_trials=int(n_trials))


def _check_tracking(t: TrackingSpec, problems: list) -> None:
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


def _approx(n: int) -> str:
    """``12,345`` or ``about 10^24``: a grid size may have hundreds of digits."""
    return f"{n:,}" if n < 10**7 else f"about 10^{len(str(n)) - 1}"


def _check_grid_size(space: list[Param], problems: list) -> None:
    """Refuse a grid above MAX_GRID_POINTS, naming the parameter with the most values (sizes are computed)."""
    sizes = {p.name: (len(p.choices) if isinstance(p, Choice) else p.size) for p in space
             if isinstance(p, Choice) or (isinstance(p, Range) and (p.is_int or p.step is not None))}
    total = math.prod(sizes.values())
    if total > MAX_GRID_POINTS:
        widest = max(sizes, key=sizes.__getitem__)
        problems.append(("params", f"the grid has {_approx(total)} points, more than the {MAX_GRID_POINTS:,} a grid "
                         f"search may try (params.{widest} alone has {_approx(sizes[widest])}); use a coarser step, "
                         "list fewer values, or use sampler random or tpe"))


_RANGE_KEYS = ("low", "high", "log", "step", "when", "choices")


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def same_value(a: Any, b: Any) -> bool:
    """``a == b`` without Python's ``True == 1``: a condition on a bool matches only true/false."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _parse_when(name: str, when: Any, params: dict[str, Any], problems: list) -> tuple:
    where = f"params.{name}.when"
    if not isinstance(when, dict) or not when:
        problems.append((where, f"must be a mapping of parameter -> value or list of values (got {when!r})"))
        return ()
    out = []
    for other, values in when.items():
        if other not in params:
            problems.append((f"{where}.{other}", f"names a parameter that is not in params; give {other!r} a list of choices first{_closest(other, list(params))}"))
            continue
        if other == name:
            problems.append((f"{where}.{other}", "a parameter cannot depend on itself"))
            continue
        vals = tuple(values) if isinstance(values, list) else (values,)
        if not vals:
            problems.append((f"{where}.{other}", f"an empty list never matches; list at least one of {other}'s values"))
            continue
        target = params[other]
        if isinstance(target, dict) and isinstance(target.get("choices"), list):
            target = target["choices"]
        allowed = target if isinstance(target, list) else [target] if not isinstance(target, dict) else None
        if allowed is None:
            problems.append((f"{where}.{other}", f"{other} is a range; a condition must name a categorical parameter (a list)"))
            continue
        for v in vals:
            if not any(same_value(v, a) for a in allowed):
                bools = " (a condition on true/false matches only true or false)" if any(
                    isinstance(a, bool) for a in allowed) and not isinstance(v, bool) else ""
                problems.append((f"{where}.{other}", f"{v!r} is not one of {other}'s values {allowed}{bools}"))
        out.append((other, vals))
    return tuple(out)


def _parse_choices(name: str, value: Any, model: str, where: str, problems: list) -> tuple[Any, ...] | None:
    if not isinstance(value, list):
        problems.append((where, f"must be a list of values (got {value!r})"))
        return None
    if not value:
        problems.append((where, "an empty list gives nothing to choose from; list at least one value"))
        return None
    bad_type = [v for v in value if isinstance(v, dict | list)]
    if bad_type:
        problems.append((where, f"choices must be plain values, not {type(bad_type[0]).__name__}s (got {bad_type[0]!r})"))
        return None
    # equality, not spelling: 1 and 1.0 (and true and 1) are one value to Optuna and to the model
    firsts: dict[Any, Any] = {}
    for v in value:
        if v in firsts:
            problems.append((where, f"choices must be distinct: {firsts[v]!r} and {v!r} are equal (got {value!r})"))
            return None
        firsts[v] = v
    errs = [e for e in (check_value(name, v, model) for v in value) if e]
    if errs:
        problems.append((where, errs[0]))
        return None
    return tuple(value)


def _parse_params(params: dict[str, Any], model: str, problems: list) -> list[Param]:
    space: list[Param] = []
    for name, value in params.items():
        where = f"params.{name}"
        if name not in PARAMS:
            problems.append((where, f"unknown parameter; known: {', '.join(PARAMS)}{_closest(name, list(PARAMS))}"))
            continue
        if name == "batch_norm" and model == "resnet" and value is not True:
            problems.append((where, "resnet always uses batch norm; remove this key"))
            continue
        if isinstance(value, dict):
            unknown = [k for k in value if k not in _RANGE_KEYS]
            if unknown:
                problems.append((f"{where}.{unknown[0]}", f"unknown key; a range takes {', '.join(_RANGE_KEYS)}{_closest(unknown[0], _RANGE_KEYS)}"))
                continue
            when = _parse_when(name, value["when"], params, problems) if "when" in value else ()
            if "choices" in value:
                extra = [k for k in value if k not in ("choices", "when")]
                if extra:
                    problems.append((f"{where}.{extra[0]}", "a mapping with choices takes only choices and when"))
                    continue
                choice = _parse_choices(name, value["choices"], model, f"{where}.choices", problems)
                if choice is not None:
                    space.append(Choice(name, choice, when) if len(choice) > 1 else Fixed(name, choice[0], when))
                continue
            if set(value) == {"when"}:
                problems.append((where, "a conditional parameter needs low/high or a list of values"))
                continue
            if "low" not in value or "high" not in value:
                missing = "low" if "low" not in value else "high"
                problems.append((f"{where}.{missing}", "required key is missing: a range needs low and high"))
                continue
            low, high = value["low"], value["high"]
            ok = True
            for key, v in (("low", low), ("high", high)):
                if not _is_num(v):
                    problems.append((f"{where}.{key}", f"must be a number (got {v!r})"))
                    ok = False
            if not ok:
                continue
            info = PARAMS[name]
            if info.kind not in ("int", "float"):
                problems.append((where, f"{name} is a {info.kind} parameter: give a value or a list of values, not a range"))
                continue
            # the parameter's kind decides: a float parameter stays float with integer bounds ({low: 0, high: 1})
            is_int = info.kind == "int"
            bounds_int = isinstance(low, int) and isinstance(high, int) and not isinstance(value.get("step"), float)
            if is_int and not bounds_int:
                problems.append((where, f"{name} takes integers: low and high must be integers (got {low!r}, {high!r})"))
                continue
            if name == "depth" and model == "resnet":
                problems.append((where, "resnet depth must be 6n+2: give a list, e.g. [20, 32, 44, 56]"))
                continue
            log = value.get("log", False)
            step = value.get("step")
            if not isinstance(log, bool):
                problems.append((f"{where}.log", f"must be true or false (got {log!r})"))
                continue
            if low > high:
                problems.append((where, f"low <= high must hold (got low={low!r}, high={high!r})"))
                continue
            if log and low <= 0:
                problems.append((f"{where}.low", f"must be > 0 when log is true (got {low!r})"))
                continue
            if step is not None:
                if not _is_num(step) or not math.isfinite(step) or step <= 0:
                    problems.append((f"{where}.step", f"must be a positive number (got {step!r})"))
                    continue
                if log:
                    problems.append((f"{where}.step", "cannot be combined with log: true (Optuna's rule)"))
                    continue
                if low < high and step > high - low:
                    problems.append((f"{where}.step", f"is larger than the range ({step!r} > high - low = "
                                     f"{high - low!r}): only low would ever be tried; use a smaller step, or "
                                     "a single value"))
                    continue
            bad = [(k, check_value(name, v, model)) for k, v in (("low", low), ("high", high))]
            bad = [(k, b) for k, b in bad if b]
            if bad:
                problems.append((f"{where}.{bad[0][0]}", bad[0][1]))
                continue
            if low == high:
                space.append(Fixed(name, low, when))
            else:
                space.append(Range(name, low, high, is_int, log, step, when))
        elif isinstance(value, list):
            choice = _parse_choices(name, value, model, where, problems)
            if choice is not None:
                space.append(Choice(name, choice) if len(choice) > 1 else Fixed(name, choice[0]))
        else:
            err = check_value(name, value, model)
            if err:
                problems.append((where, err))
                continue
            space.append(Fixed(name, value))
    _check_cycles(space, problems)
    return space


def _check_cycles(space: list[Param], problems: list) -> None:
    """Refuse ``when`` conditions that depend on each other in a circle: no parent-first order exists."""
    deps = {p.name: [d for d, _ in p.when] for p in space}
    for start in deps:
        path, todo = [start], [(start, iter(deps[start]))]
        while todo:
            _, it = todo[-1]
            nxt = next(it, None)
            if nxt is None:
                todo.pop()
                path.pop()
            elif nxt == start:
                cycle = " -> ".join([*path, start])
                problems.append((f"params.{start}.when", f"conditions form a cycle ({cycle}); a parameter cannot depend on itself, even through others"))
                return
            elif nxt in deps and nxt not in path:
                path.append(nxt)
                todo.append((nxt, iter(deps[nxt])))


__all__ = [
    "Spec", "DataSpec", "SearchSpec", "CVSpec", "ExecutionSpec", "TrackingSpec",
    "Fixed", "Range", "Choice", "Param", "load_spec", "parse_spec", "DATASETS", "MODEL_DEFAULTS",
]
