"""``hpo`` command line: one module per command; this module only dispatches and formats errors.

Errors hpo knows about print as one message and exit with code 2; set ``HPO_DEBUG=1`` to see
the traceback as well.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from hpo.cli import cancel as cancel_cmd
from hpo.cli import compare as compare_cmd
from hpo.cli import dashboard as dashboard_cmd
from hpo.cli import jobs as jobs_cmd
from hpo.cli import report as report_cmd
from hpo.cli import run as run_cmd
from hpo.cli import show as show_cmd
from hpo.cli import submit as submit_cmd
from hpo.cli import sync as sync_cmd
from hpo.cli import ui as ui_cmd
from hpo.cli import validate as validate_cmd

COMMANDS = (run_cmd, validate_cmd, show_cmd, compare_cmd, report_cmd, ui_cmd, dashboard_cmd, submit_cmd, jobs_cmd,
            cancel_cmd, sync_cmd)

EPILOG = """examples:
  hpo validate search_spaces/digits_mlp.yaml
  hpo run search_spaces/digits_mlp.yaml
  hpo run search_spaces/digits_mlp.yaml --resume --n-trials 40
  hpo show digits-mlp --csv > trials.csv
  hpo ui
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    import hpo

    parser = argparse.ArgumentParser(
        prog="hpo", description="Hyperparameter search for PyTorch models: Optuna proposes, k-fold CV scores, "
        "MLflow records.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpo {hpo.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.NAME, help=cmd.HELP, description=cmd.HELP, epilog=cmd.EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_arguments(p)
        p.set_defaults(_handler=cmd.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    from hpo.errors import HpoError

    try:
        return int(args._handler(args) or 0)
    except HpoError as exc:
        if os.environ.get("HPO_DEBUG"):
            raise
        print(f"error: {exc}" if "\n" not in str(exc) else f"error:\n{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
