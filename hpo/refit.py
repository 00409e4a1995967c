"""After the search: the best trial refit on all training data, tested once, saved, logged, reported.

best trial -> :class:`~hpo.trial.RefitJob` -> executor -> (model, test metrics) ->
``checkpoint/best.pt`` + logged and registered model + summary on the parent run -> trials
table -> report plots. The study loop (:mod:`hpo.study`) decides *whether* each step runs
(a resumed study does not refit twice); this module only does them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo import space
from hpo.metrics import METRICS
from hpo.spec import Spec

log = logging.getLogger("hpo")


@dataclass
class Refit:
    """A refit model and what it was made from."""

    model: Any  # torch.nn.Module on the CPU, eval mode
    test_metrics: dict[str, float]
    best: Any  # optuna FrozenTrial
    epochs: int
    params: dict[str, Any]


@dataclass
class Finale:
    """What the finale leaves: the logged model's URI, its registered version with aliases, test metrics."""

    model_uri: str | None = None
    registered: str | None = None  # "models:/NAME/VERSION (@alias, ...)"
    test_metrics: dict[str, float] = field(default_factory=dict)


def finale(study: Any, spec: Spec, dataset: Any, executor: Any, tracker: Any, parent_id: str,
           interrupts: Any) -> Finale:
    """After the search: refit the best trial, log and register its model and the trials table (unless
    this study already did, for the same finished trials), then the report.

    Each step enters its phase of ``interrupts`` (a Ctrl-C stops a refit at once, waits for logging,
    stops the report before its next plot); what is done is recorded on the study for ``--resume``."""
    from hpo.resume import REFIT_ATTR, REPORT_ATTR, finished_record
    from hpo.search import counts, finished_count

    done = finished_count(study)
    rec = finished_record(study.user_attrs, done)
    model = None
    if rec is None:
        interrupts.enter("refit")
        best = refit_best(study, spec, dataset, executor)
        interrupts.enter("log")
        model_uri, registered, test_metrics = None, None, {}
        if best is not None:
            model, test_metrics = best.model, best.test_metrics
            model_uri, registered = log_refit(best, tracker=tracker, parent_id=parent_id, spec=spec,
                                              dataset=dataset, counts=counts(study))
        tracker.log_trials_table(study)
        if spec.is_multi:
            log_front(study, spec, tracker)
        study.set_user_attr(REFIT_ATTR, {"finished": done, "model_uri": model_uri, "test_metrics": test_metrics,
                                         "registered": registered,
                                         "best_trial": None if best is None else best.best.number})
    else:  # stopped during the report last time: the model is registered already
        model_uri, registered, test_metrics = rec.get("model_uri"), rec.get("registered"), rec.get("test_metrics", {})
    if spec.tracking.report and study.user_attrs.get(REPORT_ATTR) != done:
        interrupts.enter("report")
        if model is None and model_uri is not None:
            model = tracker.stored_model()
        write_study_report(study, tracker, parent_id, spec, dataset, model, stop=interrupts.check)
    interrupts.enter("log")
    study.set_user_attr(REPORT_ATTR, done)
    return Finale(model_uri, registered, test_metrics)


def refit_best(study: Any, spec: Spec, dataset: Any, executor: Any) -> Refit | None:
    """Train the best trial's parameters on the whole training split for the mean best epoch of its
    folds, where trials run, and test once; ``None`` when no trial completed."""
    from hpo.selection import chosen
    from hpo.trial import FOLD_EPOCHS_ATTR, RefitJob, refit_epochs

    best, why = chosen(study, spec)
    if best is None:
        if spec.constraints and why != "no trial completed":
            from hpo.errors import NoFeasibleTrial

            raise NoFeasibleTrial(f"{why} of study {spec.name!r}, so nothing is refit. Run more trials with: "
                                  f"hpo run {spec.path or 'SPEC'} --resume --n-trials N, or start a study under "
                                  "another name with looser constraints")
        log.warning("no trial completed; nothing to refit")
        return None
    params = space.resolve(spec, best.params)
    fold_epochs = best.user_attrs.get(FOLD_EPOCHS_ATTR)
    if spec.is_objective:  # the mean best epoch where the function reports epochs, else its params as they were
        epochs = refit_epochs(fold_epochs, 1) if any(fold_epochs or ()) and "epochs" in params else 0
    else:
        epochs = refit_epochs(fold_epochs, params["epochs"])
    if epochs:
        params = {**params, "epochs": epochs}
    task_metrics = [m for m, info in METRICS.items() if info.task == spec.task]
    obj = spec.objective
    job = RefitJob(model=spec.model, params=params, epochs=epochs, seed=spec.search.seed * 7 + 1,
                   direction=spec.direction, metrics=task_metrics, objective=obj is not None, metric=spec.metric,
                   evaluate=obj.evaluate if obj is not None else None)
    model, test_metrics = executor.refit(job, dataset)
    return Refit(model, test_metrics, best, epochs, params)


def log_refit(refit: Refit, *, tracker: Any, parent_id: str, spec: Spec, dataset: Any,
              counts: dict[str, int]) -> tuple[str, str | None]:
    """Checkpoint, logged and registered model, the summary (metrics, ``best_*`` params, ``hpo.best.*``
    tags) on the parent run, then the new version's aliases (``tracking.alias``, ``tracking.promote``);
    returns the logged model's URI and ``models:/NAME/VERSION (@aliases)``."""
    from hpo.checkpoint import save_checkpoint

    ds, best = dataset, refit.best
    with tempfile.TemporaryDirectory(prefix="hpo-") as tmp:  # the outbox keeps its own copy while offline
        ckpt = save_checkpoint(Path(tmp) / "best.pt", model=spec.model, objective=spec.is_objective,
                               params=refit.params,
                               input_shape=ds.input_shape, n_outputs=ds.n_classes or 1, regression=ds.n_classes == 0,
                               state=refit.model.state_dict(),
                               extra={"trial": best.number, "test_metrics": refit.test_metrics, "spec": spec.raw,
                                      "seed": spec.search.seed})
        tracker.log_checkpoint(parent_id, ckpt)
    model_uri, version = tracker.log_model(refit.model, ds, name=spec.registered_model, code=_model_code(spec))
    tracker.log_result(metric=spec.metric, best=best, refit_epochs=refit.epochs, test_metrics=refit.test_metrics,
                       counts=counts, model_uri=model_uri)
    registered = tracker.register(spec, version, refit.test_metrics) if version else None
    return model_uri, None if registered is None else registered.describe()


def log_front(study: Any, spec: Spec, tracker: Any) -> None:
    """A multi-objective study's Pareto front in MLflow: the ``pareto`` tag on its trials' runs (and off
    the runs that left it), ``pareto_front.csv`` and the ``hpo.select`` tag on the parent run."""
    import pandas as pd

    from hpo.selection import chosen, front
    from hpo.tracking.names import FRONT_TABLE, SELECT_TAG
    from hpo.trial import RUN_ID_ATTR

    members = front(study)
    tracker.mark_front([r for r in (tracker.real_id(t.user_attrs.get(RUN_ID_ATTR)) for t in members) if r])
    rows = [{"trial": t.number, **{o.metric: v for o, v in zip(spec.objectives, t.values, strict=True)},
             **{f"params_{k}": v for k, v in t.params.items()}} for t in members]
    with tempfile.TemporaryDirectory(prefix="hpo-") as tmp:
        path = Path(tmp) / FRONT_TABLE
        pd.DataFrame(rows).to_csv(path, index=False)
        tracker.log_parent_file(path)
    tracker.tag_study(SELECT_TAG, chosen(study, spec, members)[1])


def _model_code(spec: Spec) -> list[Any]:
    """The user's functions that built the refit model (factory, or objective): their code ships with it."""
    from hpo.usercode import load_target

    return [load_target(target, spec_path=spec.path, group=group)
            for key, target, group in spec.user_code() if key in ("model.factory", "objective.function")]


def write_study_report(study: Any, tracker: Any, parent_id: str, spec: Spec, dataset: Any, model: Any,
                       stop: Callable[[], None] | None = None) -> None:
    """The report plots on the parent run; a plotting problem never fails a finished study.

    ``stop`` is called between plots: a noted Ctrl-C (:class:`~hpo.interrupts.Interrupted`) ends it."""
    from hpo.interrupts import Interrupted
    from hpo.report import write_report

    try:
        write_report(study, tracker.client, parent_id, model=model, dataset=dataset, metric=spec.metric,
                     task=spec.task, stop=stop)
    except Interrupted:
        raise
    except Exception as exc:
        log.warning("the study finished but its report could not be written (%s); retry with: hpo report %s",
                    exc, spec.name)
