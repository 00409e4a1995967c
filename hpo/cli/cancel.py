"""``hpo cancel JOB``: stop a submitted study."""

from __future__ import annotations

import argparse

NAME = "cancel"
HELP = "stop a study submitted with `hpo submit` (finished trials are kept; resume with --resume)"
EXAMPLES = """examples:
  hpo cancel raysubmit_XYZ --address http://head:8265
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo cancel``."""
    p.add_argument("job", help="the job id printed by hpo submit (see hpo jobs)")
    p.add_argument("--address", required=True, metavar="URL", help="the cluster's Jobs API, e.g. http://head:8265")


def main(args: argparse.Namespace) -> int:
    """Ask Ray to stop the job."""
    from hpo.jobs import cancel

    stopped = cancel(args.address, args.job)
    print(f"job {args.job}: {'stop requested' if stopped else 'already finished'}")
    return 0
