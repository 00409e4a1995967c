"""How fast each sampler finds a good configuration, and what pruning saves (issue #5).

    python -m benchmarks.search_efficiency [--quick] [--seeds 3] [--budget 12] [--prune-epochs 6]

(a) TPE vs random vs grid at an equal budget of trials on ``mnist_5k`` with a small CNN (width 8,
    depth 2-3), 2-fold CV, 3 epochs, one trial at a time, over several seeds. The space is
    discrete so that all three samplers search the very same set of configurations (grid search
    needs lists, integer ranges or stepped floats): lr [3e-4, 1e-3, 3e-3, 1e-2] x depth {2, 3} x
    batch_size [32, 64, 128] x dropout {0, 0.2, 0.4} x optimizer [adam, sgd] = 144 points. With a
    budget below 144, Optuna's GridSampler visits grid points in a seeded random order.
    Output: best-so-far CV accuracy per trial (median and range over seeds) as
    ``benchmarks/results/search_efficiency.png`` and a table.
(b) Pruning: the same study (TPE) with ``pruner: none``, ``median`` and
    ``successive_halving`` and ``--prune-epochs`` epochs per trial (3 epochs leave pruners
    nothing to cut), for each of ``--prune-seeds`` seeds: epochs trained (sum over trials of the
    child run's ``epochs_trained``, each for every fold) until the best-so-far CV accuracy is
    within 0.5 percentage points of that seed's no-pruning best, total epochs, wall time and the
    refit's test accuracy; medians over seeds and each seed's ratio to no pruning.
"""

from __future__ import annotations

from benchmarks import _common as C  # first: with __main__, the thread settings precede numpy/torch

if __name__ == "__main__":
    C.early_threads()

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SPEC = """\
name: search-eff
data:
  dataset: mnist_5k
  test_size: 0.2
model: cnn
search:
  sampler: SAMPLER
  n_trials: BUDGET
  seed: SEED
  pruner: PRUNER
cv:
  folds: 2
params:
  width: 8
  lr: [0.0003, 0.001, 0.003, 0.01]
  depth: {low: 2, high: 3}
  batch_size: [32, 64, 128]
  dropout: {low: 0.0, high: 0.4, step: 0.2}
  optimizer: [adam, sgd]
  epochs: EPOCHS
"""
FOLDS = 2


def run_study(sampler: str, seed: int, budget: int, epochs: int, pruner: str = "none",
              quick: bool = False) -> dict[str, Any]:
    import hpo
    from hpo.spec import parse_spec

    text = (SPEC.replace("SAMPLER", sampler).replace("BUDGET", str(budget)).replace("SEED", str(seed))
            .replace("PRUNER", pruner).replace("EPOCHS", str(epochs)))
    if quick:  # the same code path on the small digits MLP: seconds, not a minute, in the test suite
        text = text.replace("dataset: mnist_5k", "dataset: digits").replace("model: cnn", "model: mlp")
    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec(text)
        t0 = time.perf_counter()
        res = hpo.run(spec, tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        wall = time.perf_counter() - t0
    trials = sorted(res.trials, key=lambda t: t.number)
    best, curve, epochs_cum, total = None, [], [], 0
    for t in trials:
        total += t.epochs_trained * FOLDS
        if t.state == "complete" and t.value is not None and (best is None or t.value > best):
            best = t.value
        curve.append(best)
        epochs_cum.append(total)
    return {"sampler": sampler, "seed": seed, "pruner": pruner, "wall_s": round(wall, 1), "best_cv": res.best_value,
            "test": res.test_metrics.get("accuracy"), "curve": curve, "epochs_cum": epochs_cum,
            "states": [t.state for t in trials], "n_pruned": res.counts.get("pruned", 0)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="digits MLP, 1 seed, 2 trials, 1 epoch; pruning 2 trials x 2 epochs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--prune-epochs", type=int, default=6)
    ap.add_argument("--prune-budget", type=int, default=12)
    ap.add_argument("--prune-seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=None, help="alias of --seeds")
    return C.run_main(ap, argv, _main)


def _main(args) -> dict[str, Any]:
    seeds = args.repeats or args.seeds
    budget, epochs, pe, pb, ps = args.budget, args.epochs, args.prune_epochs, args.prune_budget, args.prune_seeds
    if args.quick:
        seeds, budget, epochs, pe, pb, ps = 1, 2, 1, 2, 2, 1
    mach, vers = C.machine(), C.versions()
    samplers = ("tpe", "random", "grid")
    studies: dict[str, list[dict[str, Any]]] = {s: [] for s in samplers}
    t_all = time.perf_counter()
    for seed in range(seeds):  # interleaved: tpe, random, grid for each seed
        for s in samplers:
            studies[s].append(run_study(s, seed, budget, epochs, quick=args.quick))
    a_wall = time.perf_counter() - t_all
    curves = {}
    for s, rs in studies.items():
        med, lo, hi = [], [], []
        for i in range(budget):
            vals = [r["curve"][i] for r in rs if i < len(r["curve"]) and r["curve"][i] is not None]
            med.append(statistics.median(vals) if vals else None)
            lo.append(min(vals) if vals else None)
            hi.append(max(vals) if vals else None)
        curves[s] = {"median": med, "min": lo, "max": hi,
                     "final_best_cv": C.summarize([r["best_cv"] for r in rs], 4),
                     "test": C.summarize([r["test"] for r in rs], 4),
                     "wall_s": C.summarize([r["wall_s"] for r in rs], 1)}

    pruners = ("none", "median", "successive_halving")
    runs = {p: [] for p in pruners}
    for seed in range(ps):  # interleaved: none, median, successive_halving for each seed
        for p in pruners:
            runs[p].append(run_study("tpe", seed, pb, pe, p, quick=args.quick))
    for k in range(ps):
        ref = runs["none"][k]["best_cv"]
        for p in pruners:
            r = runs[p][k]
            reach = next((i for i, b in enumerate(r["curve"]) if b is not None and b >= ref - 0.005), None)
            r["reference_best_cv"] = ref
            r["trial_reaching_ref"] = None if reach is None else reach + 1
            r["epochs_to_ref"] = None if reach is None else r["epochs_cum"][reach]
            r["total_epochs"] = r["epochs_cum"][-1]
            none_e = runs["none"][k]["epochs_to_ref"]
            r["ratio_epochs_to_ref"] = None if r["epochs_to_ref"] is None else round(r["epochs_to_ref"] / none_e, 3)
            r["ratio_total_epochs"] = round(r["total_epochs"] / runs["none"][k]["total_epochs"], 3)
    pruning = {}
    for p, rs in runs.items():
        reached = [r["ratio_epochs_to_ref"] for r in rs if r["ratio_epochs_to_ref"] is not None]
        pruning[p] = {"runs": rs, "n_pruned": C.summarize([r["n_pruned"] for r in rs], 1),
                      "reached": f"{len(reached)}/{len(rs)}",
                      "epochs_to_ref": C.summarize([r["epochs_to_ref"] for r in rs if r["epochs_to_ref"] is not None], 1)
                      if reached else None,
                      "ratio_epochs_to_ref": C.summarize(reached, 3) if reached else None,
                      "ratio_total_epochs": C.summarize([r["ratio_total_epochs"] for r in rs], 3),
                      "best_cv": C.summarize([r["best_cv"] for r in rs], 4),
                      "test": C.summarize([r["test"] for r in rs], 4),
                      "wall_s": C.summarize([r["wall_s"] for r in rs], 1)}
    result = {"benchmark": "search_efficiency", "quick": args.quick, "machine": mach, "versions": vers,
              "seeds": seeds, "budget": budget, "epochs": epochs, "prune_epochs": pe, "prune_budget": pb,
              "prune_seeds": ps, "part_a_wall_s": round(a_wall, 1), "curves": curves, "studies": studies,
              "pruning": pruning}
    if not args.quick:
        C.RESULTS.mkdir(parents=True, exist_ok=True)
        plot(result, C.RESULTS / "search_efficiency.png")
        C.write_section("search_efficiency", render(result))
    C.emit(result)
    return result


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for s, c in r["curves"].items():
        xs = [i + 1 for i, v in enumerate(c["median"]) if v is not None]
        ax.plot(xs, [c["median"][i - 1] for i in xs], marker="o", ms=3, label=f"{s} (median)")
        ax.fill_between(xs, [c["min"][i - 1] for i in xs], [c["max"][i - 1] for i in xs], alpha=0.2)
    ax.set(xlabel="trial", ylabel="best-so-far CV accuracy",
           title=f"mnist_5k CNN, {r['seeds']} seeds (band = min–max)")
    ax.legend()
    ax = axes[1]
    for p, agg in r["pruning"].items():
        first = agg["runs"][0]
        ax.plot(first["epochs_cum"], first["curve"], marker="o", ms=3, label=f"{p} ({first['n_pruned']} pruned)")
    ax.axhline(r["pruning"]["none"]["runs"][0]["best_cv"] - 0.005, ls="--", c="gray", lw=0.8,
               label="no-pruning best − 0.5 pp")
    ax.set(xlabel="fold-epochs trained (cumulative)", ylabel="best-so-far CV accuracy",
           title=f"pruning (TPE, seed 0 of {r['prune_seeds']}, {r['prune_epochs']} epochs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(r: dict[str, Any]) -> str:
    marks = sorted({m for m in (1, 3, 6, 9, r["budget"]) if m <= r["budget"]})
    rows = []
    for s, c in r["curves"].items():
        rows.append([f"`{s}`", *[f"{c['median'][m - 1]:.4f} ({c['min'][m - 1]:.4f}–{c['max'][m - 1]:.4f})"
                                 if c["median"][m - 1] is not None else "—" for m in marks],
                     C.med_range(c["test"], 4), C.med_range(c["wall_s"], 0)])
    prow = []
    for p, agg in r["pruning"].items():
        prow.append([f"`{p}`", C.med_range(agg["n_pruned"], 0), agg["reached"],
                     C.med_range(agg["epochs_to_ref"], 0) if agg["epochs_to_ref"] else "not reached",
                     C.med_range(agg["ratio_epochs_to_ref"], 2) if agg["ratio_epochs_to_ref"] else "—",
                     C.med_range(agg["ratio_total_epochs"], 2), C.med_range(agg["best_cv"], 4),
                     C.med_range(agg["test"], 4), C.med_range(agg["wall_s"], 0)])
    lines = ["## 4. Search efficiency: TPE vs random vs grid, and pruning", "",
             C.env_block(r["machine"], r["versions"],
                         f"python -m benchmarks.search_efficiency --seeds {r['seeds']} --budget {r['budget']} "
                         f"--prune-epochs {r['prune_epochs']} --prune-budget {r['prune_budget']} "
                         f"--prune-seeds {r['prune_seeds']}"),
             f"(a) mnist_5k (4,000 train / 1,000 test), CNN width 8, depth 2–3, 2-fold CV, {r['epochs']} epochs, "
             f"budget {r['budget']} trials per study, one trial at a time, seeds 0–{r['seeds'] - 1}. Space (identical for all samplers, 144 grid points): lr "
             "[3e-4, 1e-3, 3e-3, 1e-2] × depth {2, 3} × batch_size [32, 64, 128] × dropout {0, 0.2, 0.4} × "
             "optimizer [adam, sgd]. Best-so-far CV accuracy after trial N: median (min–max) over seeds; "
             f"part (a) took {r['part_a_wall_s']:.0f} s. Plot: `benchmarks/results/search_efficiency.png`.", "",
             C.table(["sampler", *[f"after {m}" for m in marks], "refit test acc", "study wall s"], rows), "",
             f"(b) Pruning, the same space and study (TPE), {r['prune_budget']} trials × {r['prune_epochs']} "
             f"epochs, seeds 0–{r['prune_seeds'] - 1}. For each seed the reference is that seed's no-pruning best "
             "CV; 'epochs' are fold-epochs (`epochs_trained` × 2 folds) summed over trials, up to the first trial "
             "whose best-so-far is within 0.5 pp of the reference. Median (min–max) over seeds; ratios are per "
             "seed against no pruning.", "",
             C.table(["pruner", "pruned trials", "seeds reaching ref", "epochs to ref", "× none (to ref)",
                      "× none (total epochs)", "best CV", "test acc", "wall s"], prow)]
    per_seed = []
    for p in ("median", "successive_halving"):
        ratios = [C.fmt(x["ratio_epochs_to_ref"]) if x["ratio_epochs_to_ref"] is not None else "not reached"
                  for x in r["pruning"][p]["runs"]]
        per_seed.append(f"`{p}` epochs to the reference per seed: {', '.join(ratios)} × no pruning")
    lines += ["", "; ".join(per_seed) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
