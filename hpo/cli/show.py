"""``hpo show NAME``: a study's trials, best first."""

from __future__ import annotations

import argparse
import sys

from hpo.cli._common import add_tracking_uri, open_study

NAME = "show"
HELP = "print a study's trials as a table, best first"
EXAMPLES = """examples:
  hpo show digits-mlp
  hpo show digits-mlp --csv > trials.csv
"""

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo show``."""
    p.add_argument("name", help="study name (the spec's name)")
    add_tracking_uri(p)
    p.add_argument("--csv", action="store_true", help="write CSV to stdout instead of a table")


def trials_frame(study):
    """The study's trials as a DataFrame sorted best first (finished before unfinished)."""
    df = study.trials_dataframe(attrs=("number", "value", "state", "duration", "params", "user_attrs"))
    if df.empty:
        return df
    ascending = study.direction.name == "MINIMIZE"
    df = df.sort_values("value", ascending=ascending, na_position="last", kind="stable")
    return df


def main(args: argparse.Namespace) -> int:
    """Print the table (or CSV)."""
    study = open_study(args.name, args.tracking_uri)
    df = trials_frame(study)
    if args.csv:
        df.to_csv(sys.stdout, index=False)
        return 0
    from rich.console import Console
    from rich.table import Table

    params = [c for c in df.columns if c.startswith("params_")]
    table = Table(title=f"{args.name} ({study.direction.name.lower()})")
    for col in ["#", "value", "state", "seconds", *[c[len("params_"):] for c in params]]:
        table.add_column(col)
    for _, row in df.iterrows():
        state = str(row["state"])
        cells = [str(row["number"]), "" if row["value"] != row["value"] else f"{row['value']:.4f}",
                 f"[{STATE_STYLE.get(state, '')}]{state.lower()}[/]",
                 f"{row['duration'].total_seconds():.1f}" if row["duration"] == row["duration"] else ""]
        for c in params:
            v = row[c]
            cells.append("" if v != v else (f"{v:.3g}" if isinstance(v, float) else str(v)))
        table.add_row(*cells)
    Console().print(table)
    return 0
