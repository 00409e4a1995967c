"""``hpo lr-find SPEC``: the learning-rate range test for a spec's model, data and optimizer
(:mod:`hpo.lr_find`); prints the suggested ``lr`` range, draws the curve, records an MLflow run
and, with ``--write``, writes a copy of the spec that searches the suggested range."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpo.cli._common import add_tracking_uri

NAME = "lr-find"
HELP = ("LR range test: raise the learning rate every batch from --min to --max on the first fold, "
        "suggest the range where the loss falls fastest, draw the curve, log it to MLflow")
EXAMPLES = """examples:
  hpo lr-find search_spaces/digits_mlp.yaml
  hpo lr-find search_spaces/digits_mlp.yaml --min 1e-6 --max 1 --steps 200 --write
  hpo run search_spaces/digits_mlp.lr.yaml
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo lr-find``."""
    p.add_argument("spec", help="path to the study's YAML spec")
    p.add_argument("--min", dest="min_lr", type=float, default=1e-7, metavar="LR", help="first rate (default 1e-7)")
    p.add_argument("--max", dest="max_lr", type=float, default=10.0, metavar="LR", help="last rate (default 10)")
    p.add_argument("--steps", type=int, default=100, metavar="N",
                   help="batches, one rate each, geometric from --min to --max (default 100)")
    p.add_argument("--seed", type=int, metavar="S", help="model and batch-order seed (default search.seed)")
    add_tracking_uri(p, check=False)
    p.add_argument("--plot", type=Path, metavar="PNG", help="where to draw the curve (default ./STUDY-lr-find.png)")
    p.add_argument("--write", nargs="?", const="", default=None, metavar="YAML",
                   help="write a copy of the spec with params.lr over the suggested range "
                        "(default: SPEC's name with .lr.yaml, beside it)")
    p.add_argument("--no-track", action="store_true", help="do not record the sweep in MLflow")


def _check_flags(args: argparse.Namespace) -> None:
    from hpo.errors import SpecError

    problems = []
    if not args.min_lr > 0:
        problems.append(("--min", f"must be > 0 (got {args.min_lr:g})"))
    if not args.max_lr > args.min_lr:
        problems.append(("--max", f"must be greater than --min {args.min_lr:g} (got {args.max_lr:g})"))
    if args.steps < 5:
        problems.append(("--steps", f"must be >= 5 (got {args.steps})"))
    if problems:
        raise SpecError(problems)


def main(args: argparse.Namespace) -> int:
    """Run the sweep and print the suggestion; exit 2 for bad flags, a bad spec or a user objective."""
    from rich.console import Console

    from hpo import lr_find
    from hpo.redact import redact
    from hpo.spec import load_spec
    from hpo.study import resolve_device

    _check_flags(args)
    spec = load_spec(args.spec)
    if args.tracking_uri is not None:
        spec = spec.replace(tracking_uri=args.tracking_uri)
    console = Console()
    test = lr_find.sweep(spec, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, seed=args.seed,
                         device=resolve_device(spec.execution.device))
    png = lr_find.plot(test, args.plot or Path(f"{spec.name}-lr-find.png"), f"{spec.name}: LR range test ({spec.model})")
    stop = (f"the loss diverged at {test.diverged_at:.3g}" if test.diverged_at is not None
            else f"the loss had not diverged by {test.rates[-1]:.3g}")
    console.print(f"study [bold]{spec.name}[/]: {len(test.rates)} batches from {args.min_lr:g}; {stop}; "
                  f"lowest smoothed loss {min(test.smoothed):.4g} at {test.minimum:.3g}")
    console.print(f"suggested lr: [bold]{test.low:.2g}[/] to [bold]{test.steepest:.2g}[/] "
                  f"(steepest descent at {test.steepest:.3g})")
    console.print(f"curve: {png}")
    if not args.no_track:
        rid = lr_find.log_run(test, spec, png, tracking_uri=spec.tracking.uri, min_lr=args.min_lr,
                              max_lr=args.max_lr, steps=args.steps)
        console.print(f"MLflow run {rid} in experiment {spec.experiment} ({redact(spec.tracking.uri)})")
    if args.write is not None:
        source = Path(args.spec)
        out = Path(args.write) if args.write else source.with_name(f"{source.stem}.lr.yaml")
        lr = lr_find.spec_with_range(spec, test, out)
        console.print(f"wrote {out}: params.lr: {lr}")
    return 0
