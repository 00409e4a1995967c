"""``hpo sync NAME``: send the MLflow writes a study left waiting while its tracking server was away."""

from __future__ import annotations

import argparse

from hpo.spec import DEFAULT_TRACKING_URI

NAME = "sync"
HELP = "send a study's waiting MLflow writes once its tracking server is back"
EXAMPLES = """examples:
  hpo sync cifar-resnet                     # to the store the waiting writes were made for
  hpo sync cifar-resnet --tracking-uri 'http://user:PASSWORD@host:5000'   # when that URI has a password
  hpo sync digits-mlp --tracking-uri sqlite:////data/mlflow.db            # a spool beside that store

When a tracking server stays unreachable mid-study for tracking.outage_timeout seconds,
`hpo run` stops cleanly (exit code 75): Optuna's storage keeps every finished trial and
the study's MLflow writes wait in a spool beside the store (./mlruns/.outbox/NAME for a
server), which records the store they are for. Once the server answers:
hpo sync NAME, then hpo run SPEC --resume to finish the study (resume syncs first by itself).

Exit codes: 0 all sent; 75 the server still does not answer (run it again later); 2 another
store than the spool's, or one that does not exist; 1 the store refused some writes (they are
kept in the spool's failed-*.jsonl with the reason, never dropped).
"""

EXIT_STILL_WAITING = 75  # EX_TEMPFAIL: try again later


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo sync``."""
    p.add_argument("name", help="the study's name (the spec's `name:`)")
    p.add_argument("--tracking-uri", metavar="URI", default=None,
                   help="the store to send to (default: the one the spool records; required when that URI "
                        "has a password, which hpo does not save). Also where to look for the spool: beside "
                        f"a sqlite store, else ./mlruns/.outbox/NAME; default {DEFAULT_TRACKING_URI}")
    p.add_argument("--force-target", action="store_true",
                   help="send to --tracking-uri even though the spool records another URI (the same store "
                        "under another address or a changed password)")


def main(args: argparse.Namespace) -> int:
    """Replay the spool into the store it records; exit 0 when all went out, 75 when the server still
    does not answer, 2 for another or a missing store, 1 when the store refused some writes."""
    from hpo.outbox import SyncError, apply_http_defaults, spool_dir, sync
    from hpo.redact import redact
    from hpo.spool import check_target_store, failed_message, failed_writes, resolve_target, waiting
    from hpo.tracking import check_reachable

    spool = spool_dir(args.tracking_uri or DEFAULT_TRACKING_URI, args.name)
    n, failed = waiting(spool), failed_writes(spool)
    if not n and not failed:
        print(f"nothing waits for study {args.name!r} (spool {spool}; a study on a sqlite store elsewhere: "
              "pass it with --tracking-uri)")
        return 0
    command = f"hpo sync {args.name}"
    uri = resolve_target(spool, args.tracking_uri, force=args.force_target, command=command)
    if not n:
        raise SyncError(failed_message(failed, spool, uri))
    check_target_store(uri)  # before MLflow's client, which would create an empty sqlite store
    check_reachable(uri)
    apply_http_defaults(uri)

    from mlflow import MlflowClient

    sent, left = sync(MlflowClient(tracking_uri=uri, registry_uri=uri), spool)
    if left:
        print(f"sent {sent} of {n} waiting writes; {left} still wait in {spool}: {redact(uri)} stopped answering. "
              f"Run `{command}` again when it is back.")
        return EXIT_STILL_WAITING
    print(f"sent {sent} waiting writes of study {args.name!r} to {redact(uri)}")
    return 0
