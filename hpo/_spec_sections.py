"""The sections of a spec as pydantic models (``data:``, ``search:``, ``cv:``, ``execution:``,
``tracking:``, ``objective:``) and the raw document they make up: types, bounds and the keys each
section takes. The rules that span keys are in the other ``_spec_*`` modules; :mod:`hpo.spec`
re-exports these names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hpo._spec_problems import MAX_SEED
from hpo._spec_search import StopSpec, WarmStartSpec
from hpo._spec_tracking import NotifySpec, PromoteSpec

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"

# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataSpec(_Section):
    """``data:`` — which dataset (or the user's data factory) and how to split and scale it."""

    dataset: str | None = None  # required unless factory is given (checked by hpo._spec_data)
    factory: str | None = None  # "module:attr" or an installed hpo.data entry point: the user's data function
    args: dict[str, Any] = Field(default_factory=dict)  # the factory's keyword arguments (fixed, not searched)
    path: str | None = None
    target: str | None = None
    task: Literal["classification", "regression"] | None = None
    test_size: float = Field(0.2, gt=0, lt=1)
    download: bool = False
    standardize: bool = True  # per-fold input standardisation; false for inputs already normalised

    @property
    def label(self) -> str:
        """What the data is, in a word: the dataset's name or the factory's target."""
        return self.dataset if self.dataset is not None else f"factory {self.factory}"


class SearchSpec(_Section):
    """``search:`` — sampler, budget, objective."""

    sampler: Literal["grid", "random", "tpe", "gp", "cmaes", "qmc", "nsga2"] = "tpe"
    sampler_options: dict[str, Any] = Field(default_factory=dict)  # per sampler (hpo._spec_search)
    n_trials: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    metric: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    objectives: list[Any] | None = None  # several metrics instead of metric: (hpo._spec_selection)
    select: Any = None  # which trial of the Pareto front is refit: first | knee | {weighted: [...]}
    constraints: list[Any] = Field(default_factory=list)  # "METRIC <= NUMBER" / ">=": feasible trials only
    pruner: Literal["none", "median", "successive_halving", "hyperband", "wilcoxon"] = "none"
    max_failures: int | None = Field(None, ge=1)  # stop the study after this many failed trials (none = never)
    enqueue: list[Any] = Field(default_factory=list)  # configurations tried first ({name: value}), checked vs params
    warm_start: WarmStartSpec | None = None  # the best configurations of another study, tried first
    stop: StopSpec | None = None  # stop early: target reached, or no improvement for plateau_trials


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
    # train a trial's k fold models as one stacked model (hpo.packing): auto = where it is faster (every
    # packable model on CUDA; models without convolutions on the CPU), true = always (an error when the model
    # cannot be stacked), false = one fold model after another
    pack_folds: Literal["auto", True, False] = "auto"


class TrackingSpec(_Section):
    """``tracking:`` — the MLflow store, the registered model's name and aliases, notifications, logs."""

    uri: str = DEFAULT_TRACKING_URI
    experiment: str | None = None
    keep_checkpoints: int = Field(1, ge=0)
    report: bool = True  # draw the report plots onto the parent run at the end (hpo report NAME draws them later)
    # Optuna's storage (any SQLAlchemy URL, or a journal file: *.journal / *.log); default: optuna.db beside a
    # sqlite tracking store
    storage: str | None = None
    # seconds a tracking server may be unreachable mid-study before the study stops (writes wait meanwhile)
    outage_timeout: float = Field(300.0, gt=0)
    # seconds between the MLflow curve batches of a running trial (0: every epoch); the rest goes with its end
    curve_flush_s: float = Field(5.0, ge=0)
    registered_model: str | None = None  # the registry's model name the refit model is registered as; default: name
    alias: str | None = None  # set on every newly registered version (e.g. challenger)
    promote: PromoteSpec | None = None  # move an alias (champion) to the new version only when its test metric wins
    notify: NotifySpec | None = None  # post the study's events to a webhook whose URL an environment variable holds
    system_metrics: bool = False  # MLflow's own system metrics (machine-wide: CPU, memory, GPU) on the parent run
    log_max_kb: int = Field(1024, ge=0)  # each trial's logs/trial.log keeps its last this many KiB; 0: no trial logs


class ObjectiveSpec(_Section):
    """``objective:`` — the user's own training step (:mod:`hpo.objective`), instead of ``model:``."""

    function: str  # "module:attr" or an installed hpo.objectives entry point: fit_fold(params, fold, ctx) -> dict
    metric: str  # the key of the metrics it reports and returns that the search optimises
    direction: Literal["maximize", "minimize"] | None = None  # required unless hpo knows the metric
    evaluate: str | None = None  # "module:attr": evaluate(model, test) -> dict, the refit model's test metrics


class _RawSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
    data: DataSpec
    model: Any = None  # a built-in or entry-point name, or {factory:, params:}: checked by hpo._spec_model
    objective: ObjectiveSpec | None = None  # the user's training step instead of a model (hpo._spec_objective)
    search: SearchSpec = SearchSpec()
    cv: CVSpec = CVSpec()
    params: dict[str, Any] = Field(default_factory=dict)
    execution: ExecutionSpec = ExecutionSpec()
    tracking: TrackingSpec = TrackingSpec()
