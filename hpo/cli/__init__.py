"""``hpo`` command line: one module per command; this module only dispatches and formats errors.

Errors hpo knows about print as one message and exit with code 2; set ``HPO_DEBUG=1`` to see
the traceback as well. Every error message, every log record and every write to stdout and
stderr of the process goes through :func:`hpo.redact.redact` first, so no path prints a password
(MLflow itself prints run links that carry the tracking URI's userinfo).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, TextIO

from hpo.cli import cancel as cancel_cmd
from hpo.cli import compare as compare_cmd
from hpo.cli import dashboard as dashboard_cmd
from hpo.cli import jobs as jobs_cmd
from hpo.cli import lr_find as lr_find_cmd
from hpo.cli import report as report_cmd
from hpo.cli import run as run_cmd
from hpo.cli import show as show_cmd
from hpo.cli import submit as submit_cmd
from hpo.cli import sync as sync_cmd
from hpo.cli import ui as ui_cmd
from hpo.cli import validate as validate_cmd

COMMANDS = (run_cmd, validate_cmd, lr_find_cmd, show_cmd, compare_cmd, report_cmd, ui_cmd, dashboard_cmd, submit_cmd,
            jobs_cmd, cancel_cmd, sync_cmd)

EPILOG = """examples:
  hpo validate search_spaces/digits_mlp.yaml
  hpo lr-find search_spaces/digits_mlp.yaml
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


def _redact_log_records() -> None:
    """Hide passwords in every log record (hpo's, MLflow's, Ray's) before any handler formats it:
    warnings quote URIs and exception texts that may carry one."""
    import logging

    from hpo.redact import redact

    make = logging.getLogRecordFactory()
    if getattr(make, "hpo_redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return record
        safe = redact(message)
        if safe != message:
            record.msg, record.args = safe, None
        return record

    factory.hpo_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class _RedactingStream:
    """A text stream (stdout, stderr) that hides passwords in every write; all else is the stream's own.

    MLflow writes "View run NAME at: URI/#/..." straight to stdout when a run ends, with the
    tracking URI's userinfo in it; no logging setting reaches that.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from hpo.redact import redact

        self._stream.write(redact(text))
        return len(text)  # what the caller wrote, as a stream reports it

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding: rich and others ask
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hpo`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    _redact_log_records()
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (s if isinstance(s, _RedactingStream) else _RedactingStream(s) for s in streams)
    try:
        return _run(args)
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    from hpo.errors import HpoError
    from hpo.redact import redact

    try:
        return int(args._handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        known = isinstance(exc, HpoError)
        if not known or os.environ.get("HPO_DEBUG"):
            # a bug (or HPO_DEBUG) still shows its traceback, with passwords hidden like every other line
            print(redact(traceback.format_exc()), end="", file=sys.stderr)
        if not known:
            return 1
        message = redact(str(exc))  # the one place every error path prints through
        print(f"error: {message}" if "\n" not in message else f"error:\n{message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
