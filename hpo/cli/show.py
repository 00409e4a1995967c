"""``hpo show NAME``: a study's trials, best first (a rich table, or CSV / JSON for scripts)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from hpo.cli._common import add_tracking_uri, open_study
from hpo.resume import METRIC_ATTR, PARENT_RUN_ATTR
from hpo.trial import CV_STD_ATTR, DURATION_ATTR, INTERRUPTED_ATTR, REASON_ATTR, RESOURCES_ATTR, RUN_ID_ATTR

NAME = "show"
HELP = "print a study's trials as a table, best first"

EXAMPLES = """examples:
  hpo show digits-mlp
  hpo show digits-mlp --csv > trials.csv
  hpo show digits-mlp --json | jq '.trials[0].params'
"""

STATE_STYLE = {"complete": "green", "pruned": "yellow", "failed": "red", "running": "cyan", "waiting": "dim",
               "interrupted": "magenta"}
STATE_NAME = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
              "WAITING": "waiting"}
STATE_ORDER = {"complete": 0, "pruned": 1, "failed": 2, "interrupted": 3, "running": 4, "waiting": 5}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo show``."""
    p.add_argument("name", help="study name (the spec's name)")
    add_tracking_uri(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="write CSV to stdout instead of a table")
    fmt.add_argument("--json", action="store_true", help="write JSON to stdout instead of a table")


def trial_state(trial: Any) -> str:
    """complete | pruned | failed | interrupted (cut short by Ctrl-C, re-queued on --resume) | running | waiting."""
    name = STATE_NAME.get(trial.state.name, trial.state.name.lower())
    if name == "failed" and trial.user_attrs.get(INTERRUPTED_ATTR):
        return "interrupted"
    return name


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial, best first: complete trials by value (in the study's direction), then
    pruned, failed, interrupted and unfinished ones by number.

    Keys: number, state, value (the first objective's), objectives (a multi-objective study's other
    values, by metric), cv_std, epochs (epochs reported), duration_s, params, best (the best feasible trial;
    with several objectives: on the feasible Pareto front), feasible (None without constraints), run_id
    (the MLflow child run), reason.
    """
    from hpo.epochs import CURVE_ATTR
    from hpo.selection import FEASIBLE_ATTR, first_value, front, objective_names

    trials = study.get_trials(deepcopy=False)
    sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
    names = objective_names(study)
    best = {t.number for t in front(study)}
    rows = []
    for t in trials:
        state = trial_state(t)
        value = _num(first_value(t)) if state == "complete" else None
        others = {n: _num(v) for n, v in zip(names[1:], (t.values or [])[1:], strict=False)} if value is not None else {}
        duration, used = t.user_attrs.get(DURATION_ATTR), t.user_attrs.get(RESOURCES_ATTR, {})
        if duration is None and t.datetime_start and t.datetime_complete:
            duration = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append({
            "number": t.number, "state": state, "value": value, "objectives": others,
            "cv_std": _num(t.user_attrs.get(CV_STD_ATTR)) if value is not None else None,
            "epochs": len(t.intermediate_values) or len(t.user_attrs.get(CURVE_ATTR, {})),
            "duration_s": _num(duration), "params": dict(t.params),
            "peak_rss_mb": _num(used.get("peak_rss_mb")), "gpu_peak_mb": _num(used.get("gpu_peak_memory_mb")),
            "best": t.number in best, "feasible": t.user_attrs.get(FEASIBLE_ATTR), "run_id": t.user_attrs.get(RUN_ID_ATTR),
            "reason": t.user_attrs.get(REASON_ATTR) or "",
        })
    rows.sort(key=lambda r: (STATE_ORDER.get(r["state"], 9),
                             sign * r["value"] if r["value"] is not None else math.inf, r["number"]))
    return rows


def param_names(rows: list[dict[str, Any]]) -> list[str]:
    """Every parameter any trial sampled, in first-seen order by trial number."""
    seen: dict[str, None] = {}
    for r in sorted(rows, key=lambda r: r["number"]):
        for k in r["params"]:
            seen.setdefault(k, None)
    return list(seen)


def study_metric(study: Any, tracking_uri: str | None) -> str | None:
    """The study's metric name: the study's ``hpo.metric`` user attr (set by the report), else its
    MLflow parent run's ``metric`` param (None if neither can be read)."""
    if study.user_attrs.get(METRIC_ATTR):
        return str(study.user_attrs[METRIC_ATTR])
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not run_id:
        return None
    from hpo.cli._common import mlflow_client

    try:
        # read-only: `hpo show` works on a store the user may only read, and never creates one
        return mlflow_client(tracking_uri).get_run(run_id).data.params.get("metric")
    except Exception:  # no MLflow store beside the study, or the run is gone: the table says "value"
        return None


def fmt_value(v: Any) -> str:
    """A metric value for a table: 4 decimals, or 4 significant digits when large."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"
    return str(v)


def fmt_param(v: Any) -> str:
    """A parameter value for a table: floats to 3 significant digits."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def emit(write: Any) -> None:
    """Run ``write(stdout)``; a reader that stops early (``| head``) is not an error."""
    import os

    try:
        write(sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again


def write_csv(rows: list[dict[str, Any]], out: Any) -> None:
    """Rows as CSV: number, state, value, cv_std, epochs_trained, duration_s, peak_rss_mb, one column per parameter,
    run_id, reason."""
    import csv

    params = param_names(rows)
    w = csv.writer(out)
    others = list(dict.fromkeys(k for r in rows for k in r["objectives"]))
    w.writerow(["number", "state", "value", *others, "cv_std", "epochs_trained", "duration_s", "peak_rss_mb", *params,
                "run_id", "reason"])
    for r in rows:
        w.writerow([r["number"], r["state"], "" if r["value"] is None else repr(r["value"]),
                    *["" if r["objectives"].get(k) is None else repr(r["objectives"][k]) for k in others],
                    "" if r["cv_std"] is None else repr(r["cv_std"]), r["epochs"],
                    "" if r["duration_s"] is None else f"{r['duration_s']:.3f}",
                    "" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.1f}",
                    *["" if r["params"].get(p) is None else r["params"][p] for p in params],
                    r["run_id"] or "", r["reason"]])


def render_table(name: str, rows: list[dict[str, Any]], direction: str, metric: str | None) -> Any:
    """The rich Table of ``hpo show``: with several objectives, a column for each, the Pareto front in bold."""
    from rich.table import Table

    params = param_names(rows)
    others = list(dict.fromkeys(k for r in rows for k in r["objectives"]))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    caption = ", ".join(f"[{STATE_STYLE.get(k, '')}]{v} {k}[/]" for k, v in
                        sorted(counts.items(), key=lambda kv: STATE_ORDER.get(kv[0], 9)))
    order = "Pareto front in bold" if others else "best first"
    table = Table(title=f"{name}: {metric or 'value'} ({direction}){''.join(f', {o}' for o in others)}, {order}",
                  caption=caption, caption_justify="left")
    table.add_column("#", justify="right")
    table.add_column("state")
    table.add_column(metric or "value", justify="right")
    for o in others:
        table.add_column(o, justify="right")
    table.add_column("± std", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("RSS MB", justify="right")
    gpu = any(r["gpu_peak_mb"] is not None for r in rows)
    if gpu:
        table.add_column("GPU MB", justify="right")
    for p in params:
        table.add_column(p, justify="right")
    table.add_column("note", overflow="ellipsis", no_wrap=True, max_width=60)
    for r in rows:
        style = STATE_STYLE.get(r["state"], "")
        note = ("pareto" if others else "best") if r["best"] else (
            r["reason"].splitlines()[0][:120] if r["reason"] else "infeasible" if r["feasible"] is False else "")
        table.add_row(
            str(r["number"]), f"[{style}]{r['state']}[/]", fmt_value(r["value"]),
            *["" if r["objectives"].get(o) is None else f"{r['objectives'][o]:.4g}" for o in others],
            "" if r["cv_std"] is None else f"{r['cv_std']:.4f}", str(r["epochs"] or ""),
            "" if r["duration_s"] is None else f"{r['duration_s']:.1f}",
            "" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}",
            *(["" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"] if gpu else []),
            *[fmt_param(r["params"].get(p)) for p in params], note,
            style="bold" if r["best"] else None,
        )
    return table


def main(args: argparse.Namespace) -> int:
    """Print the table (or CSV / JSON)."""
    study = open_study(args.name, args.tracking_uri)
    rows = trial_rows(study)
    if args.csv:
        emit(lambda out: write_csv(rows, out))
        return 0
    direction = study.directions[0].name.lower()
    metric = study_metric(study, args.tracking_uri)
    if args.json:
        doc = {"study": args.name, "metric": metric, "direction": direction, "trials": rows}
        if len(study.directions) > 1:
            from hpo.selection import objective_names

            doc["objectives"] = [{"metric": n, "direction": d.name.lower()}
                                 for n, d in zip(objective_names(study), study.directions, strict=True)]
        emit(lambda out: out.write(json.dumps(doc, indent=2, default=str) + "\n"))
        return 0
    from rich.console import Console

    Console().print(render_table(args.name, rows, direction, metric))
    return 0
