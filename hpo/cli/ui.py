"""``hpo ui``: the MLflow UI on the study store, bound to 127.0.0.1."""

from __future__ import annotations

import argparse
import subprocess
import sys

from hpo.cli._common import add_tracking_uri

NAME = "ui"
HELP = "start the MLflow UI on the tracking store (127.0.0.1 unless --host says otherwise)"
EXAMPLES = """examples:
  hpo ui                      # http://127.0.0.1:5000
  hpo ui --port 5050
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo ui``."""
    add_tracking_uri(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)


def command(args: argparse.Namespace) -> list[str]:
    """The ``mlflow ui`` command line this runs."""
    from hpo.spec import DEFAULT_TRACKING_URI

    uri = args.tracking_uri or DEFAULT_TRACKING_URI
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", args.host, "--port", str(args.port), "--workers", "1"]


def main(args: argparse.Namespace) -> int:
    """Run the UI until Ctrl-C."""
    cmd = command(args)
    print(f"MLflow UI on http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
