"""``hpo validate SPEC``: check a spec and print the resolved search space."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "validate"
HELP = ("check a spec; print the resolved space, grid size and defaults; build a factory model once "
        "(exit 2 on errors)")
EXAMPLES = """examples:
  hpo validate search_spaces/digits_mlp.yaml
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``hpo validate``."""
    p.add_argument("spec", help="path to the study's YAML spec")


def main(args: argparse.Namespace) -> int:
    """Print the resolved spec; SpecError (exit 2) when it is invalid."""
    from rich.console import Console
    from rich.table import Table

    from hpo import space
    from hpo.redact import redact
    from hpo.selection import describe_goal
    from hpo.spec import load_spec

    spec = load_spec(args.spec)
    built = _check_model(spec) if spec.is_factory_model else None  # before any output: an error prints only itself
    console = Console()
    console.print(f"[green]ok[/]: {args.spec}")
    what = f"objective {spec.model}" if spec.is_objective else spec.model
    console.print(f"study [bold]{spec.name}[/]: {what} on {spec.data.label} ({spec.task}), "
                  f"{spec.search.sampler} sampler, {spec.n_trials} trials, {spec.cv.folds}-fold CV, "
                  f"{describe_goal(spec)}, pruner {spec.search.pruner}, seed {spec.search.seed}")
    first = []
    if spec.search.enqueue:
        first.append(f"{len(spec.search.enqueue)} enqueued configurations")
    if spec.search.warm_start:
        first.append(f"the best {spec.search.warm_start.top_k} of study {spec.search.warm_start.study}")
    if first:
        console.print(f"tried first: {' and '.join(first)}")
    if spec.search.stop:
        rules = [f"target {spec.search.stop.target:g}"] if spec.search.stop.target is not None else []
        if spec.search.stop.plateau_trials:
            rules.append(f"no improvement by {spec.search.stop.min_delta:g} in {spec.search.stop.plateau_trials} trials")
        console.print(f"stops early at: {' or '.join(rules)}")
    if spec.data.factory:
        args_text = ", ".join(f"{k}={v!r}" for k, v in spec.data.args.items())
        console.print(f"data factory: {spec.data.factory}({args_text}), standardize {spec.data.standardize}")
    grid = spec.grid_size
    if spec.search.sampler == "grid" and grid is not None:
        console.print(f"grid size: {grid}")
    console.print(f"tracking: {redact(spec.tracking.uri)} (experiment {spec.experiment}); executor "
                  f"{spec.execution.executor}, device {spec.execution.device}")
    table = Table("parameter", "kind", "values")
    for row in space.describe(spec):
        table.add_row(*row)
    console.print(table)
    if built is not None:
        console.print(f"model {spec.model}: {built.describe()}")
    return 0


def _check_model(spec: Any) -> Any:
    """Build the factory's model once for the spec's data, on the CPU (a :class:`hpo.models.BuildCheck`);
    SpecError (exit 2) when it cannot."""
    from hpo.data import load_spec_dataset
    from hpo.models import check_build

    dataset = load_spec_dataset(spec)  # the model's input shape and outputs come from the data
    built = check_build(spec, tuple(dataset.input_shape), dataset.n_classes or 1)
    if spec.execution.pack_folds is True:  # a model that cannot train its folds stacked is an error now, not at run
        from hpo.packing import study_packing

        study_packing(spec, tuple(dataset.input_shape), dataset.n_classes or 1, "cpu")
    return built
