"""The refit model in MLflow: logged with a signature and its code, registered; checkpoints read back.

``mlflow.pytorch.log_model`` only works through MLflow's fluent API (a global active run and
URIs); :func:`log_model` sets those for one call and puts back exactly what was there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hpo.tracking.names import CHECKPOINT_DIR, MODEL_NAME

log = logging.getLogger("hpo")


def log_model(model: Any, dataset: Any, *, uri: str, parent_id: str, name: str,
              code: Sequence[Any] = ()) -> tuple[str, str | None]:
    """``mlflow.pytorch.log_model`` onto the parent run, registered as ``name``, with a signature and
    an input example from the test split and hpo's own code beside it; returns the logged model's URI
    and the registered version.

    The user's code travels too: the local module file or package folder of every class in ``model``
    that is not torch's or hpo's (and of the functions in ``code``: the model factory or the objective
    that built it), so the registered model loads where that code is not installed. Code from installed
    distributions is left to them. A model the test inputs cannot be fed to as one array (a user
    objective's model with several inputs, a Dataset's items) is logged without a signature."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    import hpo

    try:
        example = np.asarray(dataset.x_test[:5], dtype=np.float32)
        with torch.no_grad():
            out = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, out)
    except Exception as exc:  # noqa: BLE001 - the user's model decides what it takes
        if not code:
            raise
        log.info("the model is logged without a signature: it does not take the test inputs as one array (%s)", exc)
        example, signature = None, None
    with _fluent(uri), mlflow.start_run(run_id=parent_id):
        kwargs = dict(name=MODEL_NAME, registered_model_name=name, signature=signature, input_example=example,
                      code_paths=[str(Path(hpo.__file__).parent), *_user_code(model, code)],
                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"])
        # MLflow's default: a torch.export graph (pt2), which loads without running pickled code; it traces
        # the forward on the input example, so a model without one is logged as a pickle
        fmt = "pt2" if example is not None else "pickle"
        try:
            info = mlflow.pytorch.log_model(model, serialization_format=fmt, **kwargs)
        except Exception as exc:
            if fmt == "pickle" or not _is_export_error(exc):
                raise
            # a forward torch.export cannot trace (data-dependent control flow, .item()): the pickled
            # module, with its code beside it, still loads with mlflow.pytorch.load_model / hpo.load_model
            log.warning("torch.export cannot trace the model (%s); it is logged as a pickle instead",
                        " ".join(str(exc).split())[:200])
            info = mlflow.pytorch.log_model(model, serialization_format="pickle", **kwargs)
    version = info.registered_model_version
    return info.model_uri, None if version is None else str(version)


@contextmanager
def _fluent(uri: str):
    """MLflow's fluent API (``mlflow.pytorch.log_model``/``load_model`` work only through it) pointed at ``uri``
    for one call, then exactly what was there put back (including "not set"). The caller's active
    experiment (``mlflow.set_experiment`` in a notebook, say) would make start_run refuse the parent run."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = (tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    fluent._active_experiment_id = None
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id = previous


def load_logged(model_uri: str, uri: str) -> Any:
    """The module logged at ``model_uri`` (``models:/...``) in the store at ``uri``, in eval mode."""
    import mlflow

    with _fluent(uri):
        return mlflow.pytorch.load_model(model_uri).eval()


def _is_export_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from tracing the model with ``torch.export`` (not from the store)."""
    chain = _chain(exc)
    return any(type(e).__module__.startswith("torch") for e in chain) or any("torch.export" in str(e) for e in chain)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _user_code(model: Any, code: Sequence[Any]) -> list[str]:
    """Local folders/files of the user code ``model`` is made of: what unpickling it will import."""
    import hpo
    from hpo.usercode import code_folder

    own = Path(hpo.__file__).resolve().parent
    found: list[str] = []
    objects = [type(m) for m in model.modules()] + list(code)
    for obj in objects:
        if getattr(obj, "__module__", "") == "__main__":
            continue  # pickled by value: nothing to ship
        folder = code_folder(obj)
        if folder is not None and folder != own and own not in folder.parents and str(folder) not in found:
            found.append(str(folder))
    return found


def stored_model(run_id: str, uri: str) -> Any:
    """The refit model from the parent run's checkpoint (to finish a report after an interruption),
    or ``None`` when it cannot be read (the report then leaves out the plots that need it)."""
    from hpo.checkpoint import load_model

    try:
        return load_model(run_id, tracking_uri=uri)
    except Exception as exc:
        log.warning("could not reload the refit model for the report: %s", exc)
        return None


def download_checkpoint(run_id: str, uri: str, dst: str) -> tuple[str, str] | None:
    """Download a run's checkpoint into ``dst``: the parent run's ``checkpoint/best.pt``, else a kept
    trial's ``checkpoint/trial.pt``; returns (artifact path, local path), or None when it has neither."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for name in (f"{CHECKPOINT_DIR}/best.pt", f"{CHECKPOINT_DIR}/trial.pt"):
        try:
            return name, client.download_artifacts(run_id, name, dst)
        except Exception:  # noqa: S112 - not this one: a refit writes best.pt, a kept trial trial.pt
            continue
    return None
