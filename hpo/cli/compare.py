"""``hpo compare NAME [NAME...]``: studies side by side (one column per study)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hpo.cli._common import add_tracking_uri, open_study
from hpo.cli.show import emit
from hpo.resume import PARENT_RUN_ATTR

NAME = "compare"
HELP = "print studies side by side: best value, trial counts, wall time, best params, test metric"
EXAMPLES = """examples:
  hpo compare digits-mlp digits-mlp-sgd
  hpo compare digits-mlp digits-cnn --json
  hpo compare iris-grid iris-tpe --tracking-uri sqlite:////data/mlruns/mlflow.db
"""

SETTINGS = ("dataset", "model", "sampler", "pruner", "folds", "seed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo compare``."""
    p.add_argument("names", nargs="+", metavar="NAME", help="study names (the specs' names), all in one store")
    add_tracking_uri(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="write CSV (one row per study) instead of a table")
    fmt.add_argument("--json", action="store_true", help="write JSON (a list of studies) instead of a table")


def _wall_s(run: Any, trials: list[Any]) -> float | None:
    """Parent run start -> end (includes the refit); for a running study, the span of its trials."""
    info = run.info if run is not None else None
    if info is not None and info.start_time and info.end_time:
        return (info.end_time - info.start_time) / 1000.0
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        return (max(ends) - min(starts)).total_seconds()
    return None


def study_summary(name: str, tracking_uri: str | None) -> dict[str, Any]:
    """Everything ``hpo compare`` shows about one study, as a plain dict.

    Keys: name, metric, direction, best_value, best_trial, test_value (``test_<metric>`` of the
    refit model), test_metrics (all of them), trials, complete, pruned, failed, wall_s, compute (the last
    ``hpo run``'s trial_seconds, gpu_seconds, wall_seconds, training_share from the parent run),
    best_params, settings (dataset, model, sampler, pruner, folds, seed from the parent run),
    importances, parent_run_id, status.
    """
    from hpo.cli._common import mlflow_client
    from hpo.cli.show import trial_rows

    study = open_study(name, tracking_uri)
    rows = trial_rows(study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed")}
    best = next((r for r in rows if r["best"]), None)  # best first; several objectives: the front's best first value
    best_value, best_number, best_params = (best["value"], best["number"], best["params"]) if best else (None, None, {})
    front = sum(r["best"] for r in rows) if len(study.directions) > 1 else None
    run = None
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id:
        client = mlflow_client(tracking_uri)  # read-only; a missing or damaged store is an error, not a blank column
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                from hpo.cli._common import first_line
                from hpo.errors import TrackingError

                raise TrackingError(f"cannot read study {name!r}'s parent run {run_id} from the MLflow store "
                                    f"({first_line(exc)}); pass the --tracking-uri the study ran with") from None
            run = None  # the parent run was removed: the Optuna side still compares
    params = run.data.params if run is not None else {}
    metrics = run.data.metrics if run is not None else {}
    metric = params.get("metric")
    refit = run.data.tags.get("hpo.best_trial") if run is not None else None
    if refit is not None and front:  # several objectives: the trial search.select picked and refit
        picked = next((r for r in rows if str(r["number"]) == refit), None)
        if picked is not None:
            best_value, best_number, best_params = picked["value"], picked["number"], picked["params"]
    return {
        "name": name, "metric": metric, "direction": study.directions[0].name.lower(),
        "best_value": best_value, "best_trial": best_number, "pareto_front": front,
        "test_value": metrics.get(f"test_{metric}") if metric else None,
        "test_metrics": {k[len("test_"):]: v for k, v in sorted(metrics.items()) if k.startswith("test_")},
        "trials": sum(counts.values()), **counts,
        "wall_s": _wall_s(run, study.get_trials(deepcopy=False)),
        "compute": {k[len("study/"):]: v for k, v in metrics.items() if k.startswith("study/")},
        "best_params": best_params,
        "settings": {k: params[k] for k in SETTINGS if k in params},
        "importances": {k[len("importance_"):]: v for k, v in metrics.items() if k.startswith("importance_")},
        "parent_run_id": run_id, "status": run.info.status if run is not None else None,
    }


def fmt_duration(seconds: float | None) -> str:
    """``1h 02m``, ``3m 07s``, ``12.3s``."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def render_table(studies: list[dict[str, Any]]) -> Any:
    """The rich Table of ``hpo compare``: one row per field, one column per study; the best study's
    CV and test values are bold green when all studies share a metric and direction."""
    from rich.table import Table

    from hpo.cli.show import fmt_param, fmt_value

    table = Table(title="studies side by side")
    table.add_column("", style="bold")
    for s in studies:
        table.add_column(s["name"], justify="right")

    same = len({(s["metric"], s["direction"]) for s in studies}) == 1

    def best_of(key: str) -> int | None:
        vals = [(i, s[key]) for i, s in enumerate(studies) if s[key] is not None]
        if not same or len(vals) < 2:
            return None
        pick = max if studies[0]["direction"] == "maximize" else min
        return pick(vals, key=lambda iv: iv[1])[0]

    def row(label: str, cells: list[str], winner: int | None = None, section: bool = False) -> None:
        out = [f"[bold green]{c}[/]" if i == winner and c else c for i, c in enumerate(cells)]
        table.add_row(label, *out, end_section=section)

    row("metric", [f"{s['metric'] or '?'} ({'max' if s['direction'] == 'maximize' else 'min'})" for s in studies])
    row("best CV value", [fmt_value(s["best_value"]) for s in studies], best_of("best_value"))
    row("best trial", ["" if s["best_trial"] is None else f"#{s['best_trial']}" for s in studies])
    if any(s.get("pareto_front") for s in studies):
        row("Pareto front", ["" if not s.get("pareto_front") else f"{s['pareto_front']} trials" for s in studies])
    row("test value", [fmt_value(s["test_value"]) for s in studies], best_of("test_value"), section=True)
    row("trials", [str(s["trials"]) for s in studies])
    row("complete", [str(s["complete"]) for s in studies])
    row("pruned", [str(s["pruned"]) for s in studies])
    row("failed", [str(s["failed"]) for s in studies])
    row("wall time", [fmt_duration(s["wall_s"]) for s in studies])
    row("trial compute", [fmt_duration(s["compute"].get("trial_seconds")) for s in studies])
    if any("gpu_seconds" in s["compute"] for s in studies):
        row("GPU time", [fmt_duration(s["compute"].get("gpu_seconds")) for s in studies])
    row("share training", ["" if s["compute"].get("training_share") is None else
                           f"{s['compute']['training_share']:.0%}" for s in studies], section=True)
    for key in SETTINGS:
        if any(key in s["settings"] for s in studies):
            row(key, [str(s["settings"].get(key, "")) for s in studies])
    table.add_section()
    names: dict[str, None] = {}
    for s in studies:
        for k in s["best_params"]:
            names.setdefault(k, None)
    for k in names:
        row(f"best {k}", [fmt_param(s["best_params"].get(k)) if k in s["best_params"] else "—" for s in studies])
    return table


def write_csv(studies: list[dict[str, Any]], out: Any) -> None:
    """One row per study; best params as ``best_<param>`` and test metrics as ``test_<metric>`` columns."""
    import csv

    params: dict[str, None] = {}
    tests: dict[str, None] = {}
    for s in studies:
        params.update(dict.fromkeys(s["best_params"]))
        tests.update(dict.fromkeys(s["test_metrics"]))
    head = ["name", "metric", "direction", "best_value", "best_trial", "test_value", "trials", "complete",
            "pruned", "failed", "wall_s", "trial_seconds", "gpu_seconds", "training_share", *SETTINGS]
    w = csv.writer(out)
    w.writerow([*head, *[f"best_{p}" for p in params], *[f"test_{t}" for t in tests]])
    for s in studies:
        flat = {**s, **s["compute"], **s["settings"]}
        w.writerow([("" if flat.get(k) is None else flat.get(k)) for k in head]
                   + ["" if s["best_params"].get(p) is None else s["best_params"][p] for p in params]
                   + ["" if s["test_metrics"].get(t) is None else s["test_metrics"][t] for t in tests])


def main(args: argparse.Namespace) -> int:
    """Print the comparison (or CSV / JSON)."""
    from hpo.errors import HpoError

    if len(set(args.names)) != len(args.names):
        raise HpoError(f"a study is named twice in {' '.join(args.names)}; name each study once")
    studies = [study_summary(n, args.tracking_uri) for n in args.names]
    if args.json:
        emit(lambda out: out.write(json.dumps(studies, indent=2, default=str) + "\n"))
        return 0
    if args.csv:
        emit(lambda out: write_csv(studies, out))
        return 0
    from rich.console import Console

    Console().print(render_table(studies))
    return 0
