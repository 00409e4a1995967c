"""One trial: a plain record in (:class:`TrialSpec`), k-fold training, a plain record out (:class:`TrialResult`).

Nothing here imports Optuna, MLflow or Ray: a ``TrialSpec`` can be pickled to any worker,
and the only channel back while it runs is the ``on_epoch`` callback, which receives the
epoch's metrics and answers whether to stop (pruning).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hpo.metrics import compute_metric, is_better
from hpo.training import Data, Diverged, Learner

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"

EpochCallback = Callable[[int, dict[str, float]], bool]
"""``on_epoch(epoch, metrics) -> stop``: called after every epoch with the fold-mean and
per-fold metrics; returning True stops the trial as pruned."""


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
    last_value: float | None = None  # last fold-mean reported (what a pruned trial is told with)
    worker: str = ""  # where it ran: node, device
    attempts: int = 1  # >1 when a lost worker made it run again

    @property
    def std(self) -> float:
        """Standard deviation over folds of the best-epoch metric."""
        return float(np.std(self.fold_values)) if self.fold_values else float("nan")

    @property
    def mean_best_epoch(self) -> int:
        """The epoch count a refit on all training data uses: the mean best epoch, rounded."""
        return max(1, round(float(np.mean(self.fold_best_epochs)))) if self.fold_best_epochs else 1


@dataclass
class FoldData:
    """A study's training data on a device, with its cross-validation folds as index tensors."""

    data: Data
    folds: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def build(cls, x: np.ndarray, y: np.ndarray, n_classes: int,
              folds: list[tuple[np.ndarray, np.ndarray]], device: str, standardize: bool = True) -> FoldData:
        """Move ``x``, ``y`` and the fold indices to ``device`` once, for every trial to share.

        ``standardize``: whether each fold's learner standardises its inputs (``data.standardize``)."""
        data = Data.from_arrays(x, y, n_classes, device, standardize=standardize)
        idx = [(torch.as_tensor(np.asarray(tr).copy()).to(data.device), torch.as_tensor(np.asarray(va).copy()).to(data.device))
               for tr, va in folds]
        return cls(data, idx)


def record_failure(result: TrialResult, exc: BaseException) -> None:
    """Record an exception inside a trial as its failure: type, message and where it happened."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    result.state, result.reason = FAILED, f"{type(exc).__name__}: {exc}{where}"


def run_trial(spec: TrialSpec, fd: FoldData, on_epoch: EpochCallback | None = None) -> TrialResult:
    """Train ``spec``'s k fold models in lockstep and score them; never raises.

    After every epoch the fold-mean validation metric goes to ``on_epoch``; a True answer
    stops the trial as pruned. Patience (early stopping) acts on the same mean. A NaN/inf
    loss stops the trial at once as failed; any exception is recorded as failed with its
    message.
    """
    start = time.perf_counter()
    result = TrialResult(number=spec.number, state=COMPLETE)
    learners: list[Learner] = []
    epoch = 0
    try:
        params = spec.params
        epochs = int(params["epochs"])
        patience = int(params["patience"])
        learners = [
            Learner(fd.data, tr, spec.model, params, seed=spec.seed * 1_000_003 + spec.number * 101 + k,
                    direction=spec.direction, epochs=epochs)
            for k, (tr, _va) in enumerate(fd.folds)
        ]
        y_cpu = fd.data.y.cpu().numpy()
        val_y = [y_cpu[va.cpu().numpy()] for _tr, va in fd.folds]
        best_mean, since_best = None, 0
        m = spec.metric
        for epoch in range(1, epochs + 1):
            metrics: dict[str, float] = {}
            values, train_losses, val_losses = [], [], []
            for k, (learner, (_tr, va)) in enumerate(zip(learners, fd.folds, strict=True)):
                try:
                    train_loss = learner.train_epoch()
                except Diverged as exc:
                    raise Diverged(f"{exc} at epoch {epoch} (fold {k}); lower lr or set grad_clip") from None
                out, val_loss = learner.predict(fd.data, va)
                value = compute_metric(m, val_y[k], out, fd.data.n_classes)
                learner.end_epoch(epoch, value, val_loss)
                metrics[f"fold{k}/val_{m}"] = value
                metrics[f"fold{k}/train_loss"] = train_loss
                values.append(value)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
            mean = float(np.mean(values))
            metrics[f"val_{m}"] = mean
            metrics["train_loss"] = float(np.mean(train_losses))
            metrics["val_loss"] = float(np.mean(val_losses))
            result.epochs_trained = epoch
            result.last_value = mean
            if not math.isfinite(mean):
                raise Diverged(f"validation {m} became {mean} at epoch {epoch}")
            if on_epoch is not None and on_epoch(epoch, metrics):
                result.state = PRUNED
                result.reason = f"pruned after epoch {epoch} ({m} {mean:.4g})"
                break
            if is_better(mean, best_mean, spec.direction):
                best_mean, since_best = mean, 0
            else:
                since_best += 1
                if patience and since_best >= patience:
                    break
    except Diverged as exc:
        result.state, result.reason = FAILED, str(exc)
    except torch.OutOfMemoryError:
        result.state = FAILED
        result.reason = (f"CUDA out of memory at batch_size {spec.params.get('batch_size')}; "
                         "lower the batch_size choices or run fewer trials per GPU")
    except RuntimeError as exc:
        if "DefaultCPUAllocator" in str(exc):  # the CPU allocator's out-of-memory
            result.state = FAILED
            result.reason = (f"out of memory (CPU) at batch_size {spec.params.get('batch_size')}, width "
                             f"{spec.params.get('width')}: {str(exc).split('DefaultCPUAllocator: ')[-1][:200]}; "
                             "lower batch_size/width or run fewer concurrent trials")
        else:
            record_failure(result, exc)
    except Exception as exc:  # a trial's failure is data, never fatal to the study
        record_failure(result, exc)
    if learners and all(lr.best_state is not None for lr in learners):
        result.fold_values = [float(lr.best_value) for lr in learners]
        result.fold_best_epochs = [lr.best_epoch for lr in learners]
        result.value = float(np.mean(result.fold_values))
        result.checkpoint = {"folds": [lr.best_state for lr in learners],
                             "best_epochs": result.fold_best_epochs}
    result.duration_s = time.perf_counter() - start
    return result


@dataclass(frozen=True)
class RefitJob:
    """The best parameters, trained once on all training data and tested on the held-out split."""

    model: str
    params: dict[str, Any]
    epochs: int
    seed: int
    direction: str
    metrics: list[str]


def run_refit(job: RefitJob, data: Data, x_test: np.ndarray, y_test: np.ndarray) -> tuple[torch.nn.Module, dict[str, float]]:
    """Train ``job`` on all of ``data`` (the training split, on its device); returns the CPU model
    (eval mode) and its metrics on the test split."""
    from hpo.training import evaluate

    learner = Learner(data, torch.arange(len(data.x), device=data.device), job.model, job.params, seed=job.seed,
                      direction=job.direction, epochs=job.epochs)
    for _ in range(job.epochs):
        learner.step_schedule(learner.train_epoch())
    test = Data.from_arrays(x_test, y_test, data.n_classes, data.device)
    metrics = evaluate(learner, test, job.metrics)
    model = learner.model.to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    return model, metrics
