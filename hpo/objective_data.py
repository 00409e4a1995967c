"""A user objective where trials run: the study's data as :class:`~hpo.objective.Fold` records, the
function imported once, and the refit of the best parameters with its test metrics.

The executors hold an :class:`ObjectiveData` instead of a :class:`~hpo.crossval.FoldData` when the spec
has ``objective:`` (:func:`hpo.crossval.prepare` picks one): the data stays as the user gave it (arrays,
or a ``torch.utils.data.Dataset``), since the user's function moves it to the device itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo._spec_objective import GROUP
from hpo.objective import Fold, Objective, Split, folds_of, run_objective_refit, run_objective_trial
from hpo.trial import FAILED, EpochCallback, RefitJob, TrainingSet, TrialResult, TrialSpec

log = logging.getLogger("hpo")

_loaded: dict[tuple[str, tuple[str, ...]], Any] = {}


def objective_function(target: str, code_dirs: Sequence[str] = ()) -> Any:
    """The user's function ``target`` (``module:attr`` or an ``hpo.objectives`` entry point), imported once
    per process. Raises :class:`~hpo.usercode.UserCodeError` when it cannot be imported."""
    key = (target, tuple(code_dirs))
    if key not in _loaded:
        from hpo.usercode import load_target

        _loaded[key] = load_target(target, group=GROUP, also=code_dirs)
    return _loaded[key]


@dataclass
class ObjectiveData:
    """The training split and its folds as a user objective gets them, on a worker whose device is ``device``."""

    target: str  # objective.function
    x: Any  # arrays, or a torch Dataset
    y: Any
    n_classes: int
    folds: list[Fold]
    device: str

    @classmethod
    def build(cls, training: TrainingSet, device: str) -> ObjectiveData:
        """The :class:`~hpo.objective.Fold` records of ``training``'s folds (views: nothing is copied)."""
        return cls(str(training.objective), training.x, training.y, training.n_classes,
                   folds_of(training.x, training.y, training.folds, training.n_classes), device)

    def run(self, spec: TrialSpec, on_epoch: EpochCallback | None, threads: int) -> TrialResult:
        """Run trial ``spec`` through the user's function on every fold (:func:`~hpo.objective.run_objective_trial`)."""
        try:
            fn = objective_function(spec.model)
        except Exception as exc:  # the module was importable when the spec was loaded: say what changed
            return TrialResult(number=spec.number, state=FAILED,
                               reason=f"cannot import objective {spec.model}: {type(exc).__name__}: {exc}")
        return run_objective_trial(spec, fn, self.folds, device=self.device, threads=threads,
                                   keep_weights=spec.keep_weights, on_epoch=on_epoch)

    def refit(self, job: RefitJob, x_test: Any, y_test: Any, threads: int) -> tuple[Any, dict[str, float]]:
        """Call the user's function once on all training data (``ctx.refit`` true) and test the module it saved:
        with ``objective.evaluate`` when the spec names one, else with the task's metrics on its outputs.
        Returns (CPU module in eval mode, test metrics); raises what the function raises."""
        fn: Objective = objective_function(job.model)
        module, _state, _returned = run_objective_refit(
            job.params, fn, self.x, self.y, self.n_classes, epochs=job.epochs or None, seed=job.seed,
            direction=job.direction, metric=job.metric, device=self.device, threads=threads)
        if module is None:
            raise ValueError(f"{job.model} saved a state dict in the refit; pass the model itself to ctx.save(model) "
                             "there, so that hpo can test, log and register it")
        test = Split(x_test, y_test, np.arange(len(y_test)))
        if job.evaluate is not None:
            got = objective_function(job.evaluate)(module, test)
            if not isinstance(got, dict):
                raise TypeError(f"{job.evaluate} returned {type(got).__name__}, not a dict of test metrics")
            return module, {str(k): float(v) for k, v in got.items()}
        return module, default_test(module, test, self.n_classes, job.metrics)


def default_test(module: Any, test: Split, n_classes: int, metrics: Sequence[str]) -> dict[str, float]:
    """The task's test metrics of a refit module that maps inputs to class logits (or to predictions in
    target units): what hpo measures when the spec has no ``objective.evaluate``. A module whose outputs
    are not that (several inputs, a dict) gets no test metrics and a warning naming the fix."""
    import torch

    from hpo._report_figures import model_outputs
    from hpo.metrics import compute_metric

    try:
        out = model_outputs(module, test.x)
        if n_classes:
            out = torch.softmax(torch.from_numpy(out).reshape(len(out), -1), dim=1).numpy()
        else:
            out = out.reshape(len(out))
        return {m: compute_metric(m, np.asarray(test.y), out, n_classes) for m in metrics}
    except Exception as exc:  # the user's model: its outputs decide whether the default fits
        log.warning("the refit model was not tested: calling it on the test inputs as a batch of %s failed "
                    "(%s: %s); name a test function in objective.evaluate (evaluate(model, test) -> dict)",
                    "logits" if n_classes else "predictions", type(exc).__name__, " ".join(str(exc).split())[:200])
        return {}
