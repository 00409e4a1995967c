"""k-fold training of one trial: a :class:`~hpo.trial.TrialSpec` in, a :class:`~hpo.trial.TrialResult` out.

This is the worker side (torch): the study's data on a device with its folds
(:class:`FoldData`), the k fold models trained in lockstep (:func:`run_trial`), and the refit
of the best parameters on all training data (:func:`run_refit`). Nothing here imports Optuna,
MLflow or Ray: the only channel back while a trial runs is its ``on_epoch`` callback, which
receives each epoch's metrics and answers with a :class:`~hpo.trial.Verdict`.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpo import trial_logs
from hpo.metrics import compute_metric, is_better
from hpo.training import Data, Diverged, Learner
from hpo.trial import (
    COMPLETE,
    FAILED,
    KILLED,
    PRUNED,
    EpochCallback,
    RefitJob,
    TrainingSet,
    TrialResult,
    TrialSpec,
    Verdict,
)


@dataclass
class FoldData:
    """A study's training data on a device, with its cross-validation folds as index tensors."""

    data: Data
    folds: list[tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    def build(cls, training: TrainingSet, device: str) -> FoldData:
        """Move the training arrays and the fold indices to ``device`` once, for every trial to share."""
        data = Data.from_arrays(np.asarray(training.x), np.asarray(training.y), training.n_classes, device,
                                standardize=training.standardize)
        idx = [(torch.as_tensor(np.asarray(tr).copy()).to(data.device), torch.as_tensor(np.asarray(va).copy()).to(data.device))
               for tr, va in training.folds]
        return cls(data, idx)


def record_failure(result: TrialResult, exc: BaseException) -> None:
    """Record an exception inside a trial as its failure: type, message and where it happened (and the
    whole traceback at the end of the trial's log)."""
    from hpo.trial_logs import note_failure

    note_failure(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    result.state, result.reason = FAILED, f"{type(exc).__name__}: {exc}{where}"


class SequentialFolds:
    """A trial's fold learners trained one after another within each epoch (``pack_folds: false``, and
    every trial that cannot pack); the interface :class:`hpo.packing.PackedFolds` shares."""

    def __init__(self, learners: list[Learner]) -> None:
        self.learners = learners

    def train_epoch(self) -> list[float]:
        """One epoch of every fold; each fold's mean training loss. Raises
        :class:`~hpo.training.Diverged` naming the first fold whose loss is not finite."""
        losses = []
        for k, learner in enumerate(self.learners):
            try:
                losses.append(learner.train_epoch())
            except Diverged as exc:
                raise Diverged(str(exc), fold=k) from None
        return losses

    def validate(self, val_idx: list[torch.Tensor]) -> list[tuple[np.ndarray, float]]:
        """Each fold's outputs on its validation indices and its mean validation loss."""
        return [lr.predict(lr.data, va) for lr, va in zip(self.learners, val_idx, strict=True)]

    def end_epoch(self, epoch: int, values: list[float], val_losses: list[float]) -> None:
        """Step each fold's schedule and keep the weights of each fold at its best."""
        for lr, value, loss in zip(self.learners, values, val_losses, strict=True):
            lr.end_epoch(epoch, value, loss)


def fold_group(spec: TrialSpec, learners: list[Learner], epochs: int, result: TrialResult):
    """The folds of ``spec`` packed into one stacked model when the study packs and this trial allows
    it (``result.packed`` says which, and why not), else one after another."""
    if not spec.pack:
        return SequentialFolds(learners)
    from hpo.packing import PackedFolds, trial_reason

    reason = trial_reason(spec.params, learners)
    if reason is not None:
        result.packed = f"false: {reason}"
        return SequentialFolds(learners)
    result.packed = "true"
    return PackedFolds(learners, epochs)


def run_trial(spec: TrialSpec, fd: FoldData, on_epoch: EpochCallback | None = None) -> TrialResult:
    """Train ``spec``'s k fold models in lockstep and score them; never raises.

    After every epoch the fold-mean validation metric goes to ``on_epoch``: ``PRUNE`` stops the
    trial as pruned, ``STOP`` (the study is stopping) as killed. Patience (early stopping) acts on the same mean. A NaN/inf
    loss stops the trial at once as failed; any exception is recorded as failed with its
    message. With ``spec.pack`` the folds train as one stacked model (:mod:`hpo.packing`).
    """
    from hpo.costs import CostMeter, fold_model

    start = time.perf_counter()
    result = TrialResult(number=spec.number, state=COMPLETE)
    learners: list[Learner] = []
    epoch = 0
    meter = CostMeter(fd.data.device)
    try:
        params = spec.params
        epochs = int(params["epochs"])
        patience = int(params["patience"])
        learners = [
            Learner(fd.data, tr, spec.model, params, seed=spec.seed * 1_000_003 + spec.number * 101 + k,
                    direction=spec.direction, epochs=epochs)
            for k, (tr, _va) in enumerate(fd.folds)
        ]
        group = fold_group(spec, learners, epochs, result)
        y_cpu = fd.data.y.cpu().numpy()
        val_idx = [va for _tr, va in fd.folds]
        val_y = [y_cpu[va.cpu().numpy()] for va in val_idx]
        best_mean, since_best = None, 0
        m = spec.metric
        for epoch in range(1, epochs + 1):
            try:
                train_losses = group.train_epoch()
            except Diverged as exc:
                raise Diverged(f"{exc} at epoch {epoch} (fold {exc.fold}); lower lr or set grad_clip") from None
            outputs = group.validate(val_idx)
            values = [compute_metric(m, val_y[k], out, fd.data.n_classes) for k, (out, _loss) in enumerate(outputs)]
            val_losses = [loss for _out, loss in outputs]
            group.end_epoch(epoch, values, val_losses)
            metrics: dict[str, float] = {}
            for k, (value, train_loss) in enumerate(zip(values, train_losses, strict=True)):
                metrics[f"fold{k}/val_{m}"] = value
                metrics[f"fold{k}/train_loss"] = train_loss
            mean = float(np.mean(values))
            metrics[f"val_{m}"] = mean
            metrics["train_loss"] = float(np.mean(train_losses))
            metrics["val_loss"] = float(np.mean(val_losses))
            result.epochs_trained = epoch
            if not math.isfinite(mean):
                raise Diverged(f"validation {m} became {mean} at epoch {epoch}")
            verdict = Verdict.GO if on_epoch is None else on_epoch(epoch, metrics)
            if verdict is Verdict.PRUNE:
                result.state = PRUNED
                result.reason = f"pruned after epoch {epoch} ({m} {mean:.4g})"
                break
            if verdict is Verdict.STOP:
                result.state, result.reason = KILLED, f"stopped by the study after epoch {epoch}"
                break
            if is_better(mean, best_mean, spec.direction):
                best_mean, since_best = mean, 0
            else:
                since_best += 1
                if patience and since_best >= patience:
                    break
    except Diverged as exc:
        result.state, result.reason = FAILED, str(exc)
        trial_logs.note_failure(exc)
    except torch.OutOfMemoryError as exc:
        trial_logs.note_failure(exc)
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
    if result.state == COMPLETE and learners:  # n_params, train_seconds, peak_memory_mb; inference_ms when asked
        try:
            result.costs = meter.measure(fold_model(learners[0]), fd.data.x, inference=spec.inference,
                                         autocast=learners[0].autocast)
        except Exception as exc:
            record_failure(result, exc)
    result.duration_s = time.perf_counter() - start
    return result


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


def prepare(training: TrainingSet, device: str) -> Any:
    """What an executor holds to run a study's trials on ``device``: the :class:`FoldData` of hpo's training, or
    the :class:`~hpo.objective_data.ObjectiveData` of a user objective (``training.objective``)."""
    if training.objective is not None:
        from hpo.objective_data import ObjectiveData

        return ObjectiveData.build(training, device)
    return FoldData.build(training, device)


def train(spec: TrialSpec, data: Any, on_epoch: EpochCallback | None, threads: int) -> TrialResult:
    """Run trial ``spec`` on ``data`` (from :func:`prepare`): :func:`run_trial`, or the user's objective;
    what it used is measured here, where it runs (:mod:`hpo.resources`)."""
    from hpo.resources import ResourceMeter
    from hpo.trial_logs import capture

    with capture(spec.log_max_bytes) as log:
        if spec.objective:
            meter = ResourceMeter(data.device, sum(len(f.train.indices) for f in data.folds))
            result = data.run(spec, meter.wrap(on_epoch), threads)
        else:
            meter = ResourceMeter(data.data.device, sum(len(tr) for tr, _va in data.folds))
            result = run_trial(spec, data, meter.wrap(on_epoch))
        # the trial's seconds on the epochs' clock: started before the folds' own clock, and a concurrent trial's
        # thread may hold the GIL between the two, so the epochs' seconds could sum past the folds' duration
        result.duration_s = time.perf_counter() - meter.started
        result.resources = meter.finish()
    if result.state == FAILED and not log.failure and result.reason:
        log.write(f"\ntrial failed: {result.reason}\n")
    result.log = log.text()
    return result


def refit(job: RefitJob, data: Any, x_test: Any, y_test: Any, threads: int) -> tuple[Any, dict[str, float]]:
    """The refit of ``job`` on ``data`` (from :func:`prepare`): :func:`run_refit`, or the user's objective's."""
    if job.objective:
        return data.refit(job, x_test, y_test, threads)
    return run_refit(job, data.data, x_test, y_test)
