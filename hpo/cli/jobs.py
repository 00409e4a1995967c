"""``hpo jobs``: studies submitted to a Ray cluster, newest first."""

from __future__ import annotations

import argparse

NAME = "jobs"
HELP = "list the studies submitted to a Ray cluster"
EXAMPLES = """examples:
  hpo jobs --address http://head:8265
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo jobs``."""
    p.add_argument("--address", required=True, metavar="URL", help="the cluster's Jobs API, e.g. http://head:8265")
    p.add_argument("--all", action="store_true", help="also jobs that were not submitted by hpo")


def main(args: argparse.Namespace) -> int:
    """Print the table."""
    from rich.console import Console
    from rich.table import Table

    from hpo.jobs import list_jobs

    table = Table("job", "status", "study", "spec", "started", "message")
    for job in list_jobs(args.address, include_all=args.all):
        table.add_row(job["id"], job["status"], job["study"], job["spec"], job["started"], job["message"])
    Console().print(table)
    return 0
