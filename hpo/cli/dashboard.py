"""``hpo dashboard NAME``: optuna-dashboard on the study's Optuna storage (when it is installed)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from hpo.cli._common import add_tracking_uri, open_study

NAME = "dashboard"
HELP = "open optuna-dashboard on a study's Optuna storage (pip install optuna-dashboard)"
EXAMPLES = """examples:
  hpo dashboard digits-mlp                 # http://127.0.0.1:8080/dashboard/studies/<id>
  hpo dashboard digits-mlp --port 8081

optuna-dashboard is optional: pip install optuna-dashboard
"""

INSTALL_HINT = ("optuna-dashboard is not installed in this environment; install it with "
                "`pip install optuna-dashboard`, then run `hpo dashboard NAME` again "
                "(or use `hpo ui` for the MLflow UI, which needs nothing more)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo dashboard``."""
    p.add_argument("name", help="study name (the spec's name)")
    add_tracking_uri(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)


def installed() -> bool:
    """Whether optuna-dashboard can be imported."""
    return importlib.util.find_spec("optuna_dashboard") is not None


def main(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard until Ctrl-C."""
    from hpo.errors import HpoError
    from hpo.spec import DEFAULT_TRACKING_URI
    from hpo.tracking import optuna_storage_for

    if not installed():
        raise HpoError(INSTALL_HINT)
    uri = args.tracking_uri or DEFAULT_TRACKING_URI
    study = open_study(args.name, uri)  # a clear error for an unknown name before the server starts
    from optuna.storages import JournalStorage

    # the store the study was found in: a journal as the storage opened, optuna.db by its URL
    served = study._storage if isinstance(study._storage, JournalStorage) else optuna_storage_for(uri)
    storage = served if isinstance(served, str) else "optuna.journal beside the tracking store"
    study_id = study._study_id
    import optuna_dashboard

    print(f"optuna-dashboard on http://{args.host}:{args.port}/dashboard/studies/{study_id} "
          f"(storage {storage}; Ctrl-C to stop)", file=sys.stderr)
    try:
        optuna_dashboard.run_server(served, host=args.host, port=args.port)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        raise HpoError(f"optuna-dashboard cannot listen on {args.host}:{args.port} ({exc}); "
                       "pass another --port") from None
    return 0
