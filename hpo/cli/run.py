"""``hpo run SPEC``: run a study on this machine and print its summary."""

from __future__ import annotations

import argparse

from hpo.cli._common import add_tracking_uri

NAME = "run"
HELP = "run the study a spec describes"
EXAMPLES = """examples:
  hpo run search_spaces/digits_mlp.yaml
  hpo run search_spaces/digits_mlp.yaml --n-trials 50 --seed 1
  hpo run search_spaces/digits_mlp.yaml --resume          # continue an interrupted study
  hpo run spec.yaml --tracking-uri sqlite:////data/mlflow.db
  hpo run spec.yaml --executor ray                       # a local Ray sized to this machine
  hpo run spec.yaml --executor ray --address ray://head:10001
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo run``."""
    p.add_argument("spec", help="path to the study's YAML spec")
    p.add_argument("--n-trials", type=int, metavar="N", help="finished trials to reach (overrides search.n_trials)")
    p.add_argument("--seed", type=int, metavar="S", help="overrides search.seed")
    add_tracking_uri(p, check=False)  # Spec.replace checks it, naming the spec file
    p.add_argument("--executor", choices=["local", "ray"], help="where trials run (overrides execution.executor)")
    p.add_argument("--address", metavar="ADDR", help="ray: cluster to join (overrides execution.address; "
                   "default RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", action="store_true", help="continue an existing study of the same name")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines, only the bar and the summary")


def main(args: argparse.Namespace) -> int:
    """Run the study; exit 0 when it finished, 130 when interrupted, 75 when the tracking server was lost."""
    from rich.console import Console
    from rich.markup import escape

    from hpo.errors import SpecError
    from hpo.progress import StudyProgress, summary_table
    from hpo.spec import load_spec
    from hpo.study import run

    spec = load_spec(args.spec)
    if args.n_trials is not None and args.n_trials < 1:
        raise SpecError([("--n-trials", f"must be >= 1 (got {args.n_trials})")])
    console = Console()
    try:
        result = run(spec, n_trials=args.n_trials, seed=args.seed, tracking_uri=args.tracking_uri,
                     executor=args.executor, address=args.address, resume=args.resume,
                     progress=StudyProgress(per_trial_lines=not args.quiet))
    except KeyboardInterrupt:  # before the study took over the signals: nothing was started
        console.print(f"[yellow]interrupted[/]. Start again with: {escape(resume_command(args))}")
        return 130
    if result.already_finished:
        console.print(summary_table(result))
        console.print(f"study {spec.name!r} is already finished ({sum(result.counts.values())} trials, refit and "
                      f"reported); nothing to do. To run more trials: {escape(resume_command(args, more=True))}")
        return 0
    console.print(summary_table(result))
    if result.tracking_lost:
        import shlex

        from hpo.cli.sync import EXIT_STILL_WAITING
        from hpo.tracking import redact

        # always the URI, wherever it came from (spec or flag): sync must send to the study's store
        shown = redact(result.tracking_uri)
        secret = " (put the real password in place of ***)" if shown != result.tracking_uri else ""
        waiting = (f"{result.tracking_waiting} MLflow writes wait in {result.spool}; once it answers, send them with "
                   f"hpo sync {shlex.quote(spec.name)} --tracking-uri {shlex.quote(shown)}{secret}, then "
                   if result.tracking_waiting else "once it answers, ")
        console.print(f"[red]stopped[/]: the tracking server {escape(shown)} did not answer. Finished trials are saved "
                      f"in Optuna's storage; {escape(waiting)}continue with: {escape(resume_command(args))}")
        return EXIT_STILL_WAITING
    if result.tracking_failed:
        console.print(f"[red]incomplete tracking[/]: {escape(result.tracking_failed)}")
        return 1
    if result.interrupted:
        console.print(f"[yellow]interrupted[/]: finished trials are saved. Continue with: {escape(resume_command(args))}")
        return 130
    return 0


def resume_command(args: argparse.Namespace, more: bool = False) -> str:
    """The ``hpo run ... --resume`` line that continues this run (same store, seed and executor).

    ``more``: with a placeholder for a higher ``--n-trials``."""
    import shlex

    from hpo.redact import redact

    parts = ["hpo", "run", args.spec, "--resume"]
    for flag, value in (("--seed", args.seed), ("--tracking-uri", args.tracking_uri), ("--executor", args.executor),
                        ("--address", args.address)):
        if value is not None:
            parts += [flag, redact(str(value))]
    line = shlex.join(parts)
    if more:
        return line + " --n-trials N"
    if args.n_trials is not None:
        line += f" --n-trials {args.n_trials}"
    return line
