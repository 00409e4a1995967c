"""Your own training step: a user's function trains one fold; hpo keeps the CV, pruning and checkpoints.

A user objective is ``fit_fold(params, fold, ctx) -> dict[str, float]``: it trains one model on
``fold.train``, scores it on ``fold.val``, calls ``ctx.report(epoch, metrics)`` after each epoch it
wants tracked and pruned, ``ctx.save(model)`` for the weights to keep, and returns its final metrics.
:func:`run_objective_trial` runs it once per fold of a trial, each fold on a thread of its own, the
folds taking turns in lockstep (:class:`~hpo.lockstep.Lockstep`): an epoch's fold-mean metric goes to the trial's
epoch callback once every fold still running has reported that epoch, and the callback's
:class:`~hpo.trial.Verdict` (go, prune, stop) reaches every fold. The result is the same
:class:`~hpo.trial.TrialResult` a built-in trial gives.

Worker side: imports torch (for the device and the saved weights), never Optuna, MLflow or Ray.
"""

from __future__ import annotations

import math
import posixpath
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpo import trial_logs
from hpo.lockstep import FoldByFold, Lockstep, Stopped
from hpo.metrics import is_better
from hpo.trial import COMPLETE, FAILED, KILLED, PRUNED, EpochCallback, TrialResult, TrialSpec, Verdict

Objective = Callable[[dict[str, Any], "Fold", "TrialContext"], dict[str, float]]


@dataclass(frozen=True)
class Split:
    """One part of a fold: the examples at ``indices`` of the study's training data.

    ``x`` holds the inputs (an array, or a ``torch.utils.data.Subset`` of the user's Dataset) and ``y``
    the labels or targets (an array). A split is itself a map-style dataset, so
    ``DataLoader(fold.train, batch_size=32, shuffle=True)`` works either way: item ``i`` is ``(x[i], y[i])``
    for arrays, and the Dataset's own item for a Dataset (its items carry their labels)."""

    x: Any
    y: Any
    indices: Any

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        if self.y is None or _is_dataset(self.x):
            return self.x[i]
        return self.x[i], self.y[i]


@dataclass(frozen=True)
class Fold:
    """What a user objective trains on: ``train`` and ``val`` parts (``val`` is ``None`` in the refit on all
    training data), the fold's ``index`` (``-1`` in the refit) and ``n_classes`` (0 for regression)."""

    index: int
    train: Split
    val: Split | None
    n_classes: int


_METRIC_NAME = re.compile(r"^[/\w.\- :]*$")  # MLflow's rule (mlflow.utils.validation), without importing it here
MAX_METRIC_NAME = 250 - len("fold99/")  # MLflow keys are at most 250 characters; hpo prefixes a fold's curves


def metric_name_problem(name: Any) -> str | None:
    """Why MLflow would refuse ``name`` as a curve key (once hpo prefixes ``fold<k>/``), or None."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if not _METRIC_NAME.match(name):
        return "may only hold letters, digits, underscores, dashes, periods, spaces, colons and slashes"
    norm = posixpath.normpath(name)
    if norm != name or norm == "." or norm.startswith(("..", "/")):
        return "must be a plain path (no leading, trailing or double '/', no '.' or '..' parts)"
    if len(name) > MAX_METRIC_NAME:
        return f"is longer than {MAX_METRIC_NAME} characters"
    return None


@dataclass
class TrialContext:
    """What a user objective gets besides its params and fold: where to train and how to talk back.

    Attributes: ``device`` (``"cpu"``/``"cuda"``), ``seed`` (this fold's, as a built-in fold's),
    ``threads`` (torch threads for this fold), ``precision`` (``"bf16"`` on CUDA, else ``"fp32"``),
    ``refit`` (True in the refit on all training data), ``fold`` (the fold's index).
    """

    device: str
    seed: int
    threads: int
    precision: str
    refit: bool
    fold: int
    direction: str
    metric: str
    _lockstep: Lockstep | FoldByFold | None = None
    saved: dict[str, Any] | None = None
    module: Any = None  # the refit's saved module
    best_value: float | None = None
    best_epoch: int = 0
    reported: list[int] = field(default_factory=list)
    _named: set[str] = field(default_factory=set)  # metric names reported and found valid

    def report(self, epoch: int, metrics: dict[str, float]) -> Verdict:
        """Report this fold's ``metrics`` after ``epoch`` (1, 2, ...): curves to MLflow, the fold mean to
        the pruner. Returns :data:`hpo.GO`, or ``PRUNE``/``STOP``: then return (the trial is over)."""
        for name in metrics.keys() - self._named:
            why = metric_name_problem(name)
            if why:
                raise ValueError(f"ctx.report: the metric name {name!r} {why}, so MLflow would refuse it; rename it")
            self._named.add(name)
        value = metrics.get(self.metric)
        if value is not None and is_better(float(value), self.best_value, self.direction):
            self.best_value, self.best_epoch = float(value), int(epoch)
        self.reported.append(int(epoch))
        if self._lockstep is None:  # the refit: nothing to prune
            return Verdict.GO
        return self._lockstep.report(self.fold, int(epoch), {k: float(v) for k, v in metrics.items()})

    def save(self, model: Any) -> None:
        """Keep ``model``'s weights (an ``nn.Module`` or a state dict) as this fold's checkpoint; the last call
        wins. In the refit, a module is also kept whole (a CPU copy in eval mode): it is the model hpo logs."""
        state = model.state_dict() if hasattr(model, "state_dict") else dict(model)
        self.saved = {k: v.detach().to("cpu", copy=True) if hasattr(v, "detach") else v for k, v in state.items()}
        if self.refit and hasattr(model, "state_dict"):
            import copy

            self.module = copy.deepcopy(model).to("cpu").eval()


def _part(x: Any, y: Any, idx: Any) -> Split:
    """``x``/``y`` at ``idx``: arrays and tensors are indexed; a ``torch.utils.data.Dataset`` becomes a ``Subset``."""
    if _is_dataset(x):
        from torch.utils.data import Subset

        xs: Any = Subset(x, [int(i) for i in idx])
    else:
        xs = x[idx]
    return Split(xs, None if y is None else np.asarray(y)[idx], idx)


def _is_dataset(x: Any) -> bool:
    from torch.utils.data import Dataset

    return isinstance(x, Dataset)


def folds_of(x: Any, y: Any, folds: Sequence[tuple[Any, Any]], n_classes: int) -> list[Fold]:
    """The :class:`Fold` records of a study's training data and fold indices: ``x`` is an array (its
    parts are arrays) or a ``torch.utils.data.Dataset`` (its parts are ``Subset``s); ``y`` holds the
    labels or targets the folds were drawn from (``None`` when there are none)."""
    return [Fold(k, _part(x, y, tr), _part(x, y, va), n_classes) for k, (tr, va) in enumerate(folds)]


def _fold_seed(spec: TrialSpec, k: int) -> int:
    return spec.seed * 1_000_003 + spec.number * 101 + k  # the built-in folds' seeds (hpo.crossval.run_trial)


def _problem(i: int, got: Any, ctx: TrialContext, fn: Objective, metric: str, keep_weights: bool) -> str | None:
    """Why fold ``i``'s call of ``fn`` (which returned ``got``) fails the trial, or None."""
    value = got.get(metric) if isinstance(got, dict) else None
    if value is None:
        shown = type(got).__name__ if not isinstance(got, dict) else sorted(got)
        return f"fold {i}: {getattr(fn, '__name__', 'the objective')} returned {shown}, not a dict with {metric!r}"
    if not math.isfinite(float(value)):
        return f"fold {i}: {metric} is {float(value)}"
    if keep_weights and ctx.saved is None:
        return f"fold {i}: the objective never called ctx.save(model)"
    return None


def _fold_by_fold(spec: TrialSpec, fn: Objective, folds: Sequence[Fold], contexts: list[TrialContext],
                  seeds: list[int], by_fold: FoldByFold, device: str, threads: int, keep_weights: bool,
                  returned: list, errors: list) -> str | None:
    """Run the folds one after another on this thread, each on its own RNG seed; the first problem, or None."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i, fold in enumerate(folds):
            try:
                with torch.random.fork_rng(devices=[0] if device == "cuda" else []):
                    torch.manual_seed(seeds[i])
                    returned[i] = fn(dict(spec.params), fold, contexts[i])
            except BaseException as exc:  # the user's code: its failure is the trial's
                trial_logs.note_failure(exc, f" in fold {i}")
                errors.append((i, exc))
                return None
            if by_fold.final is not None:
                return None
            problem = _problem(i, returned[i], contexts[i], fn, spec.metric, keep_weights)
            if problem or by_fold.fold_done(i, float(returned[i][spec.metric])) is not Verdict.GO:
                return problem
    finally:
        torch.set_num_threads(before)
    return None


def run_objective_trial(spec: TrialSpec, fn: Objective, folds: Sequence[Fold], *, device: str = "cpu",
                        threads: int = 1, keep_weights: bool = True,
                        on_epoch: EpochCallback | None = None) -> TrialResult:
    """Run ``fn`` on every fold of ``spec``'s trial, concurrently and in lockstep; never raises.

    The folds take turns (:class:`Lockstep`), each on its own torch RNG state, so a trial is reproducible
    from its seed whatever the function draws; with ``spec.fold_by_fold`` (``search.pruner: wilcoxon``)
    they run one after another instead (:class:`FoldByFold`). The trial's value is the mean over folds
    of the metric each call returns. It fails (with the fold and the reason) when a call raises, returns
    no ``spec.metric`` or a non-finite one, or, with ``keep_weights``, never called ``ctx.save``. A
    ``PRUNE``/``STOP`` answer ends it pruned/killed.
    """
    import torch

    start = time.perf_counter()
    result = TrialResult(number=spec.number, state=COMPLETE)
    k = len(folds)
    seeds = [_fold_seed(spec, i) for i in range(k)]
    lock: Lockstep | FoldByFold = (FoldByFold(spec.metric, on_epoch) if spec.fold_by_fold
                                   else Lockstep(seeds, spec.metric, on_epoch, device))
    contexts = [TrialContext(device, seeds[i], threads, "bf16" if device == "cuda" else "fp32",
                             False, i, spec.direction, spec.metric, lock) for i in range(k)]
    returned: list[dict[str, float] | None] = [None] * k
    errors: list[tuple[int, BaseException]] = []
    if isinstance(lock, FoldByFold):
        problem = _fold_by_fold(spec, fn, folds, contexts, seeds, lock, device, threads, keep_weights,
                                returned, errors)
        return _result(result, start, lock, errors, problem, fn, spec, returned, contexts, keep_weights)

    trial_log = trial_logs.current()

    def one(i: int) -> None:
        torch.set_num_threads(threads)  # OpenMP settings are per thread; one fold runs at a time
        with trial_logs.adopt(trial_log):  # what the fold prints and logs is the trial's
            try:
                lock.begin(i)
                returned[i] = fn(dict(spec.params), folds[i], contexts[i])
            except Stopped:
                lock.done(i)
                return
            except BaseException as exc:  # the user's code: its failure is the trial's
                trial_logs.note_failure(exc, f" in fold {i}")
                errors.append((i, exc))
                lock.done(i, failed=True)
                return
            lock.done(i)

    workers = [threading.Thread(target=one, args=(i,), name=f"hpo-fold{i}", daemon=True) for i in range(k)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return _result(result, start, lock, errors, None, fn, spec, returned, contexts, keep_weights)


def _result(result: TrialResult, start: float, lock: Lockstep | FoldByFold, errors: list, problem: str | None,
            fn: Objective, spec: TrialSpec, returned: list, contexts: list[TrialContext],
            keep_weights: bool) -> TrialResult:
    """The trial's result from what its folds returned, raised and saved (see :func:`run_objective_trial`)."""
    result.epochs_trained = lock.last_epoch
    after = f"after fold {max(i for i, r in enumerate(returned) if r is not None)}" if isinstance(lock, FoldByFold) \
        and any(r is not None for r in returned) else f"after epoch {lock.last_epoch}"
    if errors:
        i, exc = min(errors, key=lambda e: e[0])
        result.state, result.reason = FAILED, f"fold {i}: {type(exc).__name__}: {exc}"
    elif problem:
        result.state, result.reason = FAILED, problem
    elif lock.final is Verdict.PRUNE:
        result.state, result.reason = PRUNED, f"pruned {after}"
    elif lock.final is Verdict.STOP:
        result.state, result.reason = KILLED, f"stopped by the study {after}"
    values = []
    for i, (got, ctx) in enumerate(zip(returned, contexts, strict=True)):
        value = got.get(spec.metric) if isinstance(got, dict) else None
        if result.state == COMPLETE:
            problem = _problem(i, got, ctx, fn, spec.metric, keep_weights)
            if problem:
                result.state, result.reason = FAILED, problem
        values.append(float(value) if value is not None else ctx.best_value)
    if all(v is not None for v in values) and result.state in (COMPLETE, PRUNED, KILLED):
        result.fold_values = [float(v) for v in values]
        result.fold_best_epochs = [ctx.best_epoch or max(ctx.reported, default=0) for ctx in contexts]
        result.value = float(np.mean(result.fold_values))
        if all(ctx.saved is not None for ctx in contexts):
            result.checkpoint = {"folds": [ctx.saved for ctx in contexts], "best_epochs": result.fold_best_epochs}
    result.duration_s = time.perf_counter() - start
    return result


def run_objective_refit(params: dict[str, Any], fn: Objective, x: Any, y: Any, n_classes: int, *, epochs: int | None,
                        seed: int, direction: str, metric: str, device: str = "cpu",
                        threads: int = 1) -> tuple[Any, dict[str, Any] | None, dict[str, float]]:
    """Call ``fn`` once on all training data (``fold.val`` is ``None``, ``ctx.refit`` is True), with
    ``params['epochs']`` set to ``epochs`` when both are given (the best trial's mean best epoch).

    Returns the module ``fn`` last passed to ``ctx.save`` (``None`` when it saved a state dict), the saved
    weights, and what ``fn`` returned. Raises what ``fn`` raises, and ``ValueError`` when it saved nothing.
    """
    import torch

    params = dict(params)
    if epochs is not None and "epochs" in params:
        params["epochs"] = int(epochs)
    idx = np.arange(len(x))
    fold = Fold(-1, _part(x, y, idx), None, n_classes)
    ctx = TrialContext(device, seed, threads, "bf16" if device == "cuda" else "fp32", True, -1, direction, metric)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            returned = fn(params, fold, ctx)
    finally:
        torch.set_num_threads(before)
    if ctx.saved is None:
        raise ValueError(f"{getattr(fn, '__name__', 'the objective')} never called ctx.save(model) in the refit; "
                         "call it with the model to keep")
    return ctx.module, ctx.saved, dict(returned or {})
