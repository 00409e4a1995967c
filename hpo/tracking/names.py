"""Every name hpo writes into MLflow, in one place: tags, params, metric keys, artifact folders.

The README's "What MLflow records" describes these; ``tests/_layout.py`` checks a whole study
against it. Read-side commands (``hpo show``, ``hpo compare``, ``hpo report``) use the same names.
"""

from __future__ import annotations

# tags on every run of a study
STUDY_TAG = "hpo.study"
ROLE_TAG = "hpo.role"  # "study" on the parent run, "trial" on child runs
STUDY_ROLE, TRIAL_ROLE = "study", "trial"
PARENT_TAG = "mlflow.parentRunId"  # what makes MLflow show a run nested under its parent

# tags on a trial's run
TRIAL_TAG = "hpo.trial"  # the Optuna trial number
STATE_TAG = "hpo.state"  # running, then complete / pruned / failed / killed
REASON_TAG = "hpo.reason"  # why it was pruned, failed or stopped (on the parent: why the refit failed)
ATTEMPTS_TAG = "hpo.attempts"
WORKER_TAG = "hpo.worker"  # where it ran
GPU_TAG = "hpo.gpu"
PACKED_TAG = "hpo.packed"  # "true" or "false: <why>": folds trained as one stacked model (also on the parent)
SOURCE_TAG = "hpo.source"  # "enqueue" or "warm_start OTHER#N": where an enqueued trial's parameters came from
FEASIBLE_TAG = "hpo.feasible"  # "true" / "false" with search.constraints
PARETO_TAG = "pareto"  # "true" on the runs of the trials on the (feasible) Pareto front
BEST_TAG = "best"  # "true" on the one trial run with the best value so far
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "killed": "KILLED"}  # hpo.state -> run

# tags on the parent run
BEST_TRIAL_TAG = "hpo.best_trial"
BEST_PARAM_TAG = "hpo.best."  # + parameter name
MODEL_URI_TAG = "hpo.model_uri"
SELECT_TAG = "hpo.select"  # several objectives: which rule picked the refit trial, and which trial
REGISTERED_TAG = "hpo.registered_model"  # models:/NAME/VERSION of the refit model, with its aliases: (@champion)
PROMOTE_TAG = "hpo.promote"  # tracking.promote's decision: "promoted: @champion -> version 3 (...)" or "kept: ..."
STOP_REASON_TAG = "hpo.stop_reason"  # why the search stopped proposing trials: "budget: ...", "target: ...", ...

# tags on a registered model version (tracking.promote)
VERSION_DECISION_TAG = "hpo.promote.decision"  # promoted / kept
VERSION_VALUE_TAG = "hpo.promote.value"  # this version's value of the compared test metric
VERSION_PREVIOUS_TAG = "hpo.promote.previous_version"  # the version it was compared with
VERSION_PREVIOUS_VALUE_TAG = "hpo.promote.previous_value"  # and that version's value

# artifact folders
CHECKPOINT_DIR = "checkpoint"  # trial.pt on a top-k trial run, best.pt on the parent run
SPEC_DIR = "spec"  # the study's YAML on the parent run
MODEL_NAME = "model"  # the logged (and registered) refit model
TRIALS_TABLE = "trials.csv"  # Optuna's trials table on the parent run
TRIAL_LOG = "logs/trial.log"  # what a trial printed and logged, ending with a failure's traceback (child run)
STUDY_LOG = "logs/study.log"  # the driver's log records (parent run)
FRONT_TABLE = "pareto_front.csv"  # several objectives: the front's trials, objectives and params, on the parent run

# hpo lr-find: a run of its own in the study's experiment (not nested under a study run)
LR_FIND_ROLE = "lr_find"  # its hpo.role
LR_FIND_PLOT = "lr_find.png"  # the loss-vs-rate curve, at the run's artifact root
LR_FIND_PREFIX = "lr_find/"  # its metrics: loss (smoothed), batch_loss and lr by step; the suggestion at step 0


def trial_metrics(metric: str, result) -> dict[str, float]:
    """A finished trial's run metrics: duration, epochs, CV mean and std, each fold's best value and epoch."""
    metrics = {"duration_s": result.duration_s, "epochs_trained": result.epochs_trained}
    if result.value is not None:
        metrics[f"cv_{metric}_mean"] = result.value
        metrics[f"cv_{metric}_std"] = result.std
        for k, v in enumerate(result.fold_values):
            metrics[f"fold{k}/best_{metric}"] = v
            metrics[f"fold{k}/best_epoch"] = result.fold_best_epochs[k]
    metrics.update(result.costs)  # hpo's cost metrics: n_params, train_seconds, peak_memory_mb, inference_ms
    metrics.update(result.resources)  # sys/peak_rss_mb, sys/cpu_seconds, sys/gpu_* (hpo.resources)
    return metrics


def lr_find_metrics(test) -> list[tuple[str, float, int]]:
    """An LR range test's run metrics as ``(key, value, step)``: the smoothed loss, the batch loss and
    the rate of every step, then the suggested rate, the one a decade below and where it diverged."""
    rows = []
    for step, (rate, loss, smooth) in enumerate(zip(test.rates, test.losses, test.smoothed, strict=True)):
        rows += [(f"{LR_FIND_PREFIX}loss", smooth, step), (f"{LR_FIND_PREFIX}batch_loss", loss, step),
                 (f"{LR_FIND_PREFIX}lr", rate, step)]
    rows += [(f"{LR_FIND_PREFIX}suggested_lr", test.steepest, 0), (f"{LR_FIND_PREFIX}low_lr", test.low, 0)]
    if test.diverged_at is not None:
        rows.append((f"{LR_FIND_PREFIX}diverged_lr", test.diverged_at, 0))
    return rows


def study_summary(metric: str, best_value: float, best_trial: int, refit_epochs: int,
                  test_metrics: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """The parent run's result metrics: best CV value and trial, refit epochs, test metrics, trial counts."""
    summary = {f"best_cv_{metric}": best_value, "best_trial": best_trial, "refit_epochs": refit_epochs}
    summary.update({f"test_{k}": v for k, v in test_metrics.items()})
    summary.update({f"n_{k}": v for k, v in counts.items()})
    return summary


def registered_uri(name: str, version: str | int) -> str:
    """The registry URI of version ``version`` of registered model ``name``: ``models:/NAME/VERSION``."""
    return f"models:/{name}/{version}"


def best_param(name: str) -> str:
    """The parent run's param holding the best trial's value of parameter ``name``."""
    return f"best_{name}"


def test_metric(metric: str) -> str:
    """The parent run's metric with the refit model's test value of ``metric``."""
    return f"test_{metric}"
