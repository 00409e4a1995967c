"""``hpo report NAME``: (re)build a study's report plots on its MLflow parent run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hpo.cli._common import add_tracking_uri, open_study
from hpo.resume import PARENT_RUN_ATTR

NAME = "report"
HELP = "draw a study's report plots (HTML + PNG) onto its MLflow parent run"
EXAMPLES = """examples:
  hpo report digits-mlp
  hpo report digits-mlp --no-model          # skip the confusion matrix (no dataset loading)
  hpo report digits-mlp --tracking-uri sqlite:////data/mlruns/mlflow.db

The plots land as report/*.html and report/*.png artifacts of the study's parent run
(open them with `hpo ui`); parameter importances as importance_<param> metrics.
Run it from the folder the study ran in when its spec names a data file by a relative path.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo report``."""
    p.add_argument("name", help="study name (the spec's name)")
    add_tracking_uri(p)
    p.add_argument("--no-model", action="store_true",
                   help="skip the confusion matrix / predicted-vs-true plot (does not load the model or data)")


def _spec_of(client: Any, run_id: str) -> Any:
    """The study's spec from the parent run's ``spec/`` artifact, or None."""
    import tempfile
    from pathlib import Path

    from hpo.spec import parse_spec

    try:
        files = [a.path for a in client.list_artifacts(run_id, "spec") if not a.is_dir]
        if not files:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, files[0], tmp)
            text = Path(local).read_text()
        return parse_spec(text, source_path=files[0])
    except Exception as exc:
        print(f"warning: cannot read the study's spec from run {run_id}: {exc}", file=sys.stderr)
        return None


def _model_and_data(spec: Any, run_id: str, uri: str) -> tuple[Any, Any]:
    """The refit model and the dataset (test split) of a study, each None with a warning when unavailable."""
    import dataclasses

    import hpo
    from hpo.data import load_spec_dataset
    from hpo.errors import HpoError

    try:
        model = hpo.load_model(run_id, tracking_uri=uri)
    except HpoError as exc:
        print(f"warning: no model plot: {exc}", file=sys.stderr)
        return None, None
    if spec is None:
        print("warning: no model plot: the parent run has no spec/ artifact to rebuild the dataset from",
              file=sys.stderr)
        return model, None
    try:  # the study's own data (a data factory included), never downloaded again for a plot
        dataset = load_spec_dataset(dataclasses.replace(spec, data=spec.data.model_copy(update={"download": False})))
    except HpoError as exc:
        print(f"warning: no model plot: {exc} (run hpo report from the folder the study ran in)", file=sys.stderr)
        return model, None
    return model, dataset


def _check_artifacts_writable(artifact_uri: str, name: str) -> None:
    """StoreError when the parent run's artifacts live in a local folder this user may not write."""
    import os
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    from hpo.sqlite_store import StoreError

    parsed = urlparse(artifact_uri or "")
    if parsed.scheme not in ("", "file"):
        return
    probe = Path(unquote(parsed.path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # report/ and the run's folder may not exist yet
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StoreError(f"hpo report writes its plots into {probe} (the artifacts of {name!r}'s parent run), "
                         f"and that folder is not writable: permission denied. Make it writable (chmod u+w {probe}) "
                         f"or run hpo report as a user who may write it; `hpo show {name}` only reads")


def main(args: argparse.Namespace) -> int:
    """Rebuild the report and print what was written."""
    from hpo.cli._common import mlflow_client
    from hpo.errors import HpoError, TrackingError
    from hpo.metrics import METRICS
    from hpo.report import REPORT_DIR, write_report
    from hpo.spec import DEFAULT_TRACKING_URI
    from hpo.sqlite_store import StoreError, check_store

    uri = args.tracking_uri or DEFAULT_TRACKING_URI
    study = open_study(args.name, uri, write=True)
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not run_id:
        raise HpoError(f"study {args.name!r} has no MLflow parent run recorded (user attr mlflow.parent_run_id); "
                       "was it created by `hpo run`?")
    check_store(uri, write=False, kind="mlflow")  # a missing or damaged store: its own message
    try:
        check_store(uri, write=True)
    except StoreError as exc:
        raise StoreError(f"hpo report draws its plots onto the study's parent run, so it must write the store: "
                         f"{exc}. `hpo show {args.name}` and `hpo compare` only read") from None
    client = mlflow_client(uri, write=True)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise TrackingError(f"cannot read the parent run {run_id} of {args.name!r} from {uri}: {exc}; "
                            "pass the --tracking-uri the study was run with") from None
    _check_artifacts_writable(run.info.artifact_uri, args.name)
    spec = _spec_of(client, run_id)
    metric = run.data.params.get("metric") or (spec.metric if spec is not None else None)
    if metric not in METRICS and not (spec is not None and spec.is_objective):
        raise HpoError(f"the parent run {run_id} of {args.name!r} names no known metric (params.metric = {metric!r})")
    task = spec.task if spec is not None else METRICS[metric].task
    model, dataset = (None, None) if args.no_model else _model_and_data(spec, run_id, uri)

    importances = write_report(study, client, run_id, model=model, dataset=dataset, metric=metric, task=task)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    files = sorted(a.path for a in client.list_artifacts(run_id, REPORT_DIR))
    console.print(f"report of [bold]{args.name}[/] on run {run_id}: {len(files)} files under {REPORT_DIR}/")
    for f in files:
        console.print(f"  {f}")
    if importances:
        table = Table(title=f"importances (CV {metric})")
        table.add_column("parameter")
        table.add_column("importance", justify="right")
        for k, v in importances.items():
            table.add_row(k, f"{v:.3f}")
        console.print(table)
    else:
        console.print("no parameter importances (they need 2 complete trials and a parameter that varies)")
    console.print("open them with: hpo ui  (experiment -> the study's parent run -> Artifacts -> report)")
    return 0
