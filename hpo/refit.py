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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def finale(study: Any, spec: Spec, dataset: Any, executor: Any, tracker: Any, parent_id: str,
           interrupts: Any) -> tuple[str | None, dict[str, float]]:
    """After the search: refit the best trial, log its model and the trials table (unless this study
    already did, for the same finished trials), then the report; returns (model URI, test metrics).

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
        model_uri, test_metrics = None, {}
        if best is not None:
            model, test_metrics = best.model, best.test_metrics
            model_uri = log_refit(best, tracker=tracker, parent_id=parent_id, spec=spec, dataset=dataset,
                                  counts=counts(study))
        log_trials_table(study, tracker, parent_id)
        study.set_user_attr(REFIT_ATTR, {"finished": done, "model_uri": model_uri, "test_metrics": test_metrics,
                                         "best_trial": None if best is None else best.best.number})
    else:  # stopped during the report last time: the model is registered already
        model_uri, test_metrics = rec.get("model_uri"), rec.get("test_metrics", {})
    if spec.tracking.report and study.user_attrs.get(REPORT_ATTR) != done:
        interrupts.enter("report")
        if model is None and model_uri is not None:
            model = stored_model(tracker, parent_id, spec.tracking.uri)
        write_study_report(study, tracker, parent_id, spec, dataset, model, stop=interrupts.check)
    interrupts.enter("log")
    study.set_user_attr(REPORT_ATTR, done)
    return model_uri, test_metrics


def refit_best(study: Any, spec: Spec, dataset: Any, executor: Any) -> Refit | None:
    """Train the best trial's parameters on the whole training split for the mean best epoch of its
    folds, where trials run, and test once; ``None`` when no trial completed."""
    from hpo.trial import FOLD_EPOCHS_ATTR, RefitJob, refit_epochs

    try:
        best = study.best_trial
    except ValueError:
        log.warning("no trial completed; nothing to refit")
        return None
    params = space.resolve(spec, best.params)
    epochs = refit_epochs(best.user_attrs.get(FOLD_EPOCHS_ATTR), params["epochs"])
    params = {**params, "epochs": epochs}
    task_metrics = [m for m, info in METRICS.items() if info.task == spec.task]
    job = RefitJob(model=spec.model, params=params, epochs=epochs, seed=spec.search.seed * 7 + 1,
                   direction=spec.direction, metrics=task_metrics)
    model, test_metrics = executor.refit(job, dataset)
    return Refit(model, test_metrics, best, epochs, params)


def log_refit(refit: Refit, *, tracker: Any, parent_id: str, spec: Spec, dataset: Any,
              counts: dict[str, int]) -> str | None:
    """Checkpoint, logged and registered model, and the summary (metrics, ``best_*`` params,
    ``hpo.best.*`` tags) on the parent run; returns the model URI."""
    from hpo.checkpoint import save_checkpoint

    ds, best = dataset, refit.best
    with tempfile.TemporaryDirectory(prefix="hpo-") as tmp:  # the outbox keeps its own copy while offline
        ckpt = save_checkpoint(Path(tmp) / "best.pt", model=spec.model, params=refit.params,
                               input_shape=ds.input_shape, n_outputs=ds.n_classes or 1, regression=ds.n_classes == 0,
                               state=refit.model.state_dict(),
                               extra={"trial": best.number, "test_metrics": refit.test_metrics, "spec": spec.raw,
                                      "seed": spec.search.seed})
        tracker.log_checkpoint(parent_id, ckpt)
    model_uri = log_model(refit.model, ds, uri=spec.tracking.uri, parent_id=parent_id, name=spec.name,
                          factory=spec.model if spec.is_factory_model else None)

    summary = {f"best_cv_{spec.metric}": best.value, "best_trial": best.number, "refit_epochs": refit.epochs}
    summary.update({f"test_{k}": v for k, v in refit.test_metrics.items()})
    summary.update({f"n_{k}": v for k, v in counts.items()})
    tags = {f"hpo.best.{k}": str(v) for k, v in best.params.items()}
    tags["hpo.best_trial"] = str(best.number)
    if model_uri:
        tags["hpo.model_uri"] = model_uri
    tracker.log_summary(summary, {f"best_{k}": v for k, v in best.params.items()}, tags)
    return model_uri


def log_model(model: Any, dataset: Any, *, uri: str, parent_id: str, name: str, factory: str | None = None) -> str:
    """``mlflow.pytorch.log_model`` onto the parent run, registered as ``name``, with a signature and
    an input example from the test split and hpo's own code beside it; returns the model URI.

    The user's code travels too: the local module file or package folder of every class in ``model``
    that is not torch's or hpo's (and of the model ``factory``, when given), so the registered model
    loads where that code is not installed. Code from installed distributions is left to them."""
    import mlflow
    import torch
    from mlflow.models import infer_signature
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    import hpo

    example = np.asarray(dataset.x_test[:5], dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, out)
    # mlflow.pytorch.log_model works through the fluent API's globals: set them for this call only,
    # then put back exactly what was there (including "not set"). The caller's active experiment
    # (mlflow.set_experiment in a notebook, say) would make start_run refuse the study's parent run
    previous = (tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    fluent._active_experiment_id = None
    try:
        with mlflow.start_run(run_id=parent_id):
            info = mlflow.pytorch.log_model(
                model, name="model", registered_model_name=name, signature=signature,
                input_example=example, code_paths=[str(Path(hpo.__file__).parent), *_user_code(model, factory)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            )
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id = previous
    return info.model_uri


def _user_code(model: Any, factory: str | None) -> list[str]:
    """Local folders/files of the user code ``model`` is made of: what unpickling it will import."""
    import hpo
    from hpo.usercode import code_folder

    own = Path(hpo.__file__).resolve().parent
    found: list[str] = []
    objects = [type(m) for m in model.modules()]
    if factory is not None:
        from hpo.models import BUILTIN_FACTORIES, model_factory

        if factory not in BUILTIN_FACTORIES:
            objects.append(model_factory(factory))
    for obj in objects:
        if getattr(obj, "__module__", "") == "__main__":
            continue  # pickled by value: nothing to ship
        folder = code_folder(obj)
        if folder is not None and folder != own and own not in folder.parents and str(folder) not in found:
            found.append(str(folder))
    return found


def log_trials_table(study: Any, tracker: Any, parent_id: str) -> None:
    """Optuna's trials table as ``trials.csv`` on the parent run."""
    with tempfile.TemporaryDirectory(prefix="hpo-") as tmp:
        path = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(path, index=False)
        tracker.log_file(parent_id, path)


def stored_model(tracker: Any, parent_id: str, uri: str) -> Any:
    """The refit model from the parent run's checkpoint (to finish a report after an interruption),
    or ``None`` when it cannot be read (the report then leaves out the plots that need it)."""
    from hpo.checkpoint import load_model

    try:
        return load_model(tracker.real_id(parent_id), tracking_uri=uri)
    except Exception as exc:
        log.warning("could not reload the refit model for the report: %s", exc)
        return None


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
