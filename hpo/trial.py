"""The records a trial travels in: :class:`TrialSpec` to a worker, :class:`TrialResult` back.

Plain, picklable, torch-free data: the driver, the read-side CLI and any worker import this
module without importing torch, Optuna, MLflow or Ray. The fold training that turns one
into the other lives in :mod:`hpo.crossval`.

Also here: a trial's end states, the epoch callback's answer (:class:`Verdict`), and the
names of the user attributes a trial is stored with in Optuna (``hpo show`` and
``--resume`` read them back).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

COMPLETE, PRUNED, FAILED, KILLED = "complete", "pruned", "failed", "killed"
"""How a trial ended: every fold trained (or stopped early by patience); stopped by the pruner;
an error; stopped because the study stopped (Ctrl-C, lost tracking): re-queued on ``--resume``."""

# user attributes of an Optuna trial (read back by --resume, `hpo show` and the report)
RUN_ID_ATTR = "mlflow.run_id"  # the trial's MLflow child run
DURATION_ATTR = "duration_s"
FOLD_VALUES_ATTR = "fold_values"  # each fold's best-epoch metric
FOLD_EPOCHS_ATTR = "fold_best_epochs"  # each fold's best epoch
CV_STD_ATTR = "cv_std"
RESOURCES_ATTR = "hpo.resources"  # what a finished trial used: peak_rss_mb, cpu_seconds, gpu_peak_memory_mb
COSTS_ATTR = "hpo.costs"  # hpo's cost metrics of a complete trial (n_params, train_seconds, ...)
REASON_ATTR = "reason"  # why it was pruned, failed or stopped
INTERRUPTED_ATTR = "hpo.interrupted"  # a FAIL that is not final: cut short by the study stopping, re-queued on resume


class Verdict(enum.Enum):
    """The answer to every epoch a trial reports: go on, stop as pruned, or stop because the study stops."""

    GO = "go"
    PRUNE = "prune"
    STOP = "stop"


EpochCallback = Callable[[int, dict[str, float]], Verdict]
"""``on_epoch(epoch, metrics) -> Verdict``: called after every epoch with the fold-mean and
per-fold metrics."""


@dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to run one trial (picklable, no live handles)."""

    number: int
    params: dict[str, Any]  # every parameter, defaults filled in
    model: str
    metric: str
    direction: str
    seed: int
    run_id: str | None = None  # the MLflow child run that receives this trial's curves
    pack: bool = False  # train the k fold models as one stacked model where this trial's params allow it
    objective: bool = False  # ``model`` is a user objective function (hpo.objective) that trains each fold itself
    keep_weights: bool = True  # a user objective must call ctx.save (tracking.keep_checkpoints > 0)
    fold_by_fold: bool = False  # a user objective's folds one after another, each fold's value to the pruner (wilcoxon)
    inference: bool = False  # measure inference_ms after training (an objective or constraint names it)
    log_max_bytes: int = 0  # keep the last this many characters of what the trial prints and logs (hpo.trial_logs)


@dataclass
class TrialResult:
    """What a trial produced. ``value`` is the mean over folds of each fold's best-epoch metric."""

    number: int
    state: str
    value: float | None = None
    fold_values: list[float] = field(default_factory=list)
    fold_best_epochs: list[int] = field(default_factory=list)
    epochs_trained: int = 0
    duration_s: float = 0.0
    reason: str = ""
    checkpoint: dict[str, Any] | None = None  # best-epoch weights of every fold, CPU tensors
    worker: str = ""  # where it ran: node, device
    attempts: int = 1  # >1 when a lost worker made it run again
    packed: str = ""  # "true", or "false: <why>" when the study packs folds but this trial could not
    costs: dict[str, float] = field(default_factory=dict)  # hpo's cost metrics (hpo.selection.COSTS)
    log: str = ""  # what it printed and logged, ending with a failure's traceback (logs/trial.log)
    resources: dict[str, float] = field(default_factory=dict)  # sys/* totals, measured where it ran (hpo.resources)
    feasible: bool | None = None  # whether it meets search.constraints (None: the study has none, or it failed)
    # curve points (key, value, ms timestamp, epoch) the epoch sink had not sent yet: logged with the end metrics
    curves: list[tuple[str, float, int, int]] = field(default_factory=list)

    @property
    def std(self) -> float:
        """Standard deviation over folds of the best-epoch metric."""
        import numpy as np

        return float(np.std(self.fold_values)) if self.fold_values else math.nan


@dataclass(frozen=True)
class TrainingSet:
    """A study's training split and its cross-validation folds, as NumPy arrays: what every
    executor is given, to place on the device where its trials run."""

    x: Any  # numpy array, samples first
    y: Any
    n_classes: int  # 0 for regression
    folds: list[tuple[Any, Any]]  # (train indices, validation indices) per fold
    standardize: bool = True  # whether each fold's learner standardises its inputs (data.standardize)
    objective: str | None = None  # a user objective's function (objective.function): x may then be a torch Dataset


@dataclass(frozen=True)
class RefitJob:
    """The best parameters, trained once on all training data and tested on the held-out split."""

    model: str
    params: dict[str, Any]
    epochs: int
    seed: int
    direction: str
    metrics: list[str]  # the test metrics (hpo's training, and a user objective without evaluate)
    objective: bool = False  # ``model`` is a user objective function
    metric: str = ""  # a user objective's metric
    evaluate: str | None = None  # a user objective's objective.evaluate: its own test metrics


def refit_epochs(fold_best_epochs: Sequence[int] | None, default: int) -> int:
    """The epoch count a refit on all training data uses: the folds' mean best epoch, rounded
    (``default`` when the trial recorded none), at least 1."""
    epochs = fold_best_epochs or [default]
    return max(1, round(sum(epochs) / len(epochs)))
