"""``hpo submit SPEC --address http://HEAD:8265``: run a study on a Ray cluster as a Ray Job."""

from __future__ import annotations

import argparse

NAME = "submit"
HELP = "submit a study to a Ray cluster as a Ray Job (runs `hpo run SPEC --executor ray` there)"
EXAMPLES = """examples:
  hpo submit search_spaces/cifar_resnet.yaml --address http://head:8265 --tracking-uri http://mlflow:5000
  hpo submit spec.yaml --address http://127.0.0.1:8265 --wait     # stream the logs, exit with the job's status

The spec and the data files it names are shipped with the job (paths must stay inside the
working directory), and so is the hpo package; the cluster's nodes need hpo's dependencies
(torch, optuna, mlflow, ray[default]). Token auth: set RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH (the cluster's token file) in this shell.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo submit``."""
    p.add_argument("spec", help="path to the study's YAML spec")
    p.add_argument("--address", required=True, metavar="URL", help="the cluster's dashboard / Jobs API, e.g. http://head:8265")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow store the cluster writes to: an http(s) tracking server, or a sqlite URI with an "
                        "absolute path when the head runs on this machine (default: the spec's tracking.uri)")
    p.add_argument("--wait", action="store_true", help="stream the job's logs and exit with its status")
    p.add_argument("--n-trials", type=int, metavar="N", help="overrides search.n_trials")
    p.add_argument("--resume", action="store_true", help="continue an existing study of the same name")


def main(args: argparse.Namespace) -> int:
    """Submit, print the job id and how to follow it; with --wait, follow it."""
    from hpo.jobs import follow, submit_study
    from hpo.redact import redact

    job_id = submit_study(args.spec, address=args.address, tracking_uri=args.tracking_uri,
                          n_trials=args.n_trials, resume=args.resume)
    # the commands are shown with the password hidden: type it in, or keep it in the environment
    address = redact(args.address)
    print(f"submitted job {job_id}")
    print(f"  follow:  ray job logs --address {address} --follow {job_id}")
    print(f"  status:  hpo jobs --address {address}")
    print(f"  stop:    hpo cancel {job_id} --address {address}")
    if not args.wait:
        return 0
    status = follow(args.address, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1
