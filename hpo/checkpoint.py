"""Checkpoints that explain themselves: weights plus the config that rebuilds the model.

Saved with ``torch.save`` as plain tensors and primitives and always read back with
``torch.load(weights_only=True)``: loading a checkpoint never runs pickled code. A file that
loader refuses (a pickled payload) or cannot parse (truncated, not a checkpoint) is reported
as "unreadable or unsafe", never loaded another way. The spec saved inside a checkpoint has its
passwords hidden (:func:`hpo.redact.redact_data`): checkpoints travel further than stores do.
A model factory's checkpoint also records the factory (target, keyword arguments, the folder its code
was imported from, its source hash): loading re-imports it, looking in that folder too.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpo.errors import HpoError
from hpo.models import BUILTIN_FACTORIES
from hpo.redact import redact_data
from hpo.usercode import UserCodeError

FORMAT = 1


def save_checkpoint(path: Path, *, model: str, params: dict[str, Any], input_shape: tuple[int, ...],
                    n_outputs: int, regression: bool, state: dict[str, torch.Tensor] | None = None,
                    folds: list[dict[str, torch.Tensor]] | None = None, extra: dict[str, Any] | None = None,
                    objective: bool = False) -> Path:
    """Write a checkpoint of one model (``state``) or of a trial's fold models (``folds``); returns ``path``.

    ``extra`` (the spec, test metrics, …) is saved with its passwords hidden, whoever the caller. With
    ``objective``, ``model`` is a user objective function and the weights are what it passed to
    ``ctx.save``: the checkpoint records the function, and only the user's code can rebuild the model.
    """
    blob = {
        "format": FORMAT,
        "model": model,
        "params": {k: v for k, v in params.items()},
        "input_shape": list(input_shape),
        "n_outputs": int(n_outputs),
        "regression": bool(regression),
        "state": state,
        "folds": folds,
        "extra": redact_data(extra or {}),
    }
    if objective:
        blob["objective"] = model
    elif model not in BUILTIN_FACTORIES:
        blob["factory"] = _factory_record(model, params)
    torch.save(blob, path)
    return path


def _factory_record(model: str, params: dict[str, Any]) -> dict[str, Any]:
    """Plain values that say which factory built the model and with what (``weights_only`` reads them)."""
    from hpo.models import factory_kwargs, model_factory
    from hpo.usercode import code_folder, source_file, source_hash

    record: dict[str, Any] = {"target": model, "kwargs": factory_kwargs(params)}
    try:
        fn = model_factory(model)  # imported when the spec was loaded: this finds it in sys.modules
    except Exception:  # the weights are still worth saving; loading will say what is missing
        return record
    folder, source = code_folder(fn), source_file(fn)
    if folder is not None:
        record["path"] = str(folder.parent)  # what goes on sys.path to import it again
    record["source"] = str(source) if source else ""
    record["code_hash"] = source_hash(fn) or ""
    return record


def _unreadable(what: str, why: str) -> HpoError:
    return HpoError(f"the checkpoint {what} is unreadable or unsafe ({why}); it was not loaded, since loading it "
                    "any other way could run code from the file. Use a checkpoint hpo wrote: download it again from "
                    "its run, or re-run the study to write a new one")


def read_checkpoint(path: str | Path, what: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    ``what`` names the checkpoint in messages (default: its path). Raises :class:`~hpo.errors.HpoError`
    ("unreadable or unsafe") when the loader refuses the file (pickled code), cannot parse it
    (truncated, damaged) or it is not an hpo checkpoint.
    """
    what = what or str(path)
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of a foreign file; the message below says what matters
            warnings.simplefilter("ignore", UserWarning)
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know: the file asks to run or build something.
        # torch's own advice (retry with weights_only=False) is exactly what must not be done, so it is dropped
        named = [line.strip() for line in str(exc).splitlines() if "global" in line.lower()]
        raise _unreadable(what, "torch.load(weights_only=True) refused it: "
                          + (named[0] if named else "it holds objects other than tensors and plain values")) from None
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise HpoError(f"no checkpoint at {what}: the file does not exist") from None
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
        raise _unreadable(what, f"cannot parse it: {type(exc).__name__}: {first}".rstrip(": ")) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("params"), dict) \
            or (blob.get("state") is None and not blob.get("folds")):
        raise _unreadable(what, f"not an hpo checkpoint of format {FORMAT}")
    return blob


def model_from_checkpoint(blob: dict[str, Any], fold: int | None = None) -> nn.Module:
    """Rebuild the :class:`~hpo.training.Standardized` model of a checkpoint (or of one fold), in eval mode."""
    from hpo.models import build_model
    from hpo.training import Standardized

    if blob.get("objective"):
        raise HpoError(f"this checkpoint holds the weights that the objective {blob['objective']} passed to ctx.save "
                       "(blob['state'], or blob['folds'][k] of a trial), and only your code builds that model: build it, "
                       "then load them with model.load_state_dict(hpo.checkpoint.read_checkpoint(path)['state']); the refit model "
                       "itself is the study's logged MLflow model (hpo.load_model(PARENT_RUN_ID) loads it)")
    state = blob["state"] if fold is None else blob["folds"][fold]
    factory = blob.get("factory") or {}
    net = build_model(blob["model"], input_shape=tuple(blob["input_shape"]), n_outputs=blob["n_outputs"],
                      params=blob["params"], code_dirs=[factory["path"]] if factory.get("path") else ())
    model = Standardized(net, state["x_mean"], state["x_std"], blob["regression"])
    model.load_state_dict(state)
    return model.eval()


def _logged_model(run_id: str, uri: str, what: str) -> nn.Module:
    """The refit model of a user objective's study: the module logged to MLflow (pickled with its code beside it)."""
    import mlflow

    from hpo.tracking.models import load_logged
    from hpo.tracking.names import MODEL_URI_TAG

    model_uri = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.tags.get(MODEL_URI_TAG)
    if not model_uri:
        raise HpoError(f"{what} holds the weights a user objective saved, and its run has no logged model "
                       f"({MODEL_URI_TAG}) to load them into; load them into your model yourself")
    try:
        return load_logged(model_uri, uri)
    except Exception as exc:
        raise HpoError(f"the refit model of a user objective ({what}) is the logged MLflow model {model_uri}, "
                       f"which cannot be loaded here: {type(exc).__name__}: {exc}") from None


def load_model(run_id: str, tracking_uri: str | None = None) -> nn.Module:
    """Load the refit best model of a study from its parent run (or a trial's first fold model
    from a child run that kept its checkpoint).

    Returns a module that takes raw inputs and returns logits or target-unit predictions.
    Raises :class:`~hpo.errors.TrackingError` if the run has no checkpoint, and
    :class:`~hpo.errors.HpoError` ("unreadable or unsafe") if its checkpoint cannot be loaded safely.
    """
    import tempfile

    from hpo.errors import TrackingError
    from hpo.spec import DEFAULT_TRACKING_URI
    from hpo.tracking.models import download_checkpoint

    uri = tracking_uri or DEFAULT_TRACKING_URI
    with tempfile.TemporaryDirectory() as tmp:
        found = download_checkpoint(run_id, uri, tmp)  # a refit writes best.pt, a kept trial trial.pt
        if found is not None:
            name, local = found
            # a checkpoint that is there but cannot be read safely is an error, not a missing one
            what = f"{name} of run {run_id}"
            blob = read_checkpoint(local, what)
    if found is not None and blob.get("objective") and name.endswith("best.pt"):
        return _logged_model(run_id, uri, what)
    if found is not None:
        try:
            return model_from_checkpoint(blob, fold=None if blob["state"] is not None else 0)
        except UserCodeError as exc:  # the factory's code is not where it was, nor installed
            raise HpoError(f"the model of {what} is built by the factory {blob['model']}, which cannot be "
                           f"imported here: {exc}") from None
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise _unreadable(what, f"its weights do not fit its model: {type(exc).__name__}: {exc}") from None
    raise TrackingError(f"run {run_id} has no checkpoint (checkpoint/best.pt or checkpoint/trial.pt); "
                        "pass the study's parent run id, or a trial in the top tracking.keep_checkpoints")
