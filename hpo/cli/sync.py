"""``hpo sync NAME``: send the MLflow writes a study left waiting while its tracking server was away."""

from __future__ import annotations

import argparse

from hpo.cli._common import add_tracking_uri

NAME = "sync"
HELP = "send a study's waiting MLflow writes once its tracking server is back"
EXAMPLES = """examples:
  hpo sync cifar-resnet --tracking-uri http://127.0.0.1:5000
  hpo sync digits-mlp                       # the default store, sqlite:///mlruns/mlflow.db

When a tracking server stays unreachable mid-study for tracking.outage_timeout seconds,
`hpo run` stops cleanly (exit code 75): Optuna's storage keeps every finished trial and
the study's MLflow writes wait in a spool beside the store. Once the server answers:
hpo sync NAME, then hpo run SPEC --resume to finish the study (resume syncs first by itself).
"""

EXIT_STILL_WAITING = 75  # EX_TEMPFAIL: try again later


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo sync``."""
    p.add_argument("name", help="the study's name (the spec's `name:`)")
    add_tracking_uri(p)


def main(args: argparse.Namespace) -> int:
    """Replay the spool; exit 0 when nothing waits any more, 75 when the server still does not answer."""
    from mlflow import MlflowClient

    from hpo.outbox import apply_http_defaults, spool_dir, sync, waiting
    from hpo.spec import DEFAULT_TRACKING_URI
    from hpo.tracking import check_reachable, redact

    uri = args.tracking_uri or DEFAULT_TRACKING_URI
    spool = spool_dir(uri, args.name)
    n = waiting(spool)
    if not n:
        print(f"nothing waits for study {args.name!r} (spool {spool})")
        return 0
    check_reachable(uri)
    apply_http_defaults(uri)
    sent, left = sync(MlflowClient(tracking_uri=uri, registry_uri=uri), spool)
    if left:
        print(f"sent {sent} of {n} waiting writes; {left} still wait in {spool}: {redact(uri)} stopped answering. "
              f"Run `hpo sync {args.name}` again when it is back.")
        return EXIT_STILL_WAITING
    print(f"sent {sent} waiting writes of study {args.name!r} to {redact(uri)}")
    return 0
