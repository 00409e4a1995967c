"""Samplers at equal budgets, and pruning in a multi-objective study (issue #17).

    python -m benchmarks.samplers [--quick] [--seeds 5] [--mo-seeds 3] [--mo-budget 12]

(a) TPE vs GP vs CMA-ES vs QMC vs random on a tabular study cheap enough for 60 trials: an MLP on
    ``digits`` (1,437 train / 360 test), 3-fold CV, 6 epochs, over a continuous space of five
    parameters (lr, weight decay, dropout, width, depth; ranges, so CMA-ES applies). Each seed's
    study runs 12 trials, is resumed to 30 and then to 60 (``--resume --n-trials``), and refits
    after each; samplers interleaved per seed. Output: the best CV accuracy after 12, 30 and 60
    trials and the refit's test accuracy then, median and range over seeds.
(b) Accuracy against ``n_params`` on the ``mnist_5k`` CNN, with and without pruning
    (``successive_halving`` on the first objective), TPE: the hypervolume of the front after N
    trials (accuracy in [0, 1] and n_params scaled by the largest model of the space, reference
    point (accuracy 0, 1.0)) and the fold-epochs trained, median and range over seeds, each
    seed's ratio to no pruning.
"""

from __future__ import annotations

from benchmarks import _common as C  # first: with __main__, the thread settings precede numpy/torch

if __name__ == "__main__":
    C.early_threads()

import argparse
import tempfile
import time
from typing import Any

SAMPLERS = ("tpe", "gp", "cmaes", "qmc", "random")
TABULAR = """\
name: samplers-SAMPLER-SEED
data: {dataset: DATASET}
model: mlp
search: {sampler: SAMPLER, n_trials: BUDGET, seed: SEED}
cv: {folds: 3}
tracking: {report: false, keep_checkpoints: 0}
params:
  lr: {low: 1.0e-4, high: 3.0e-1, log: true}
  weight_decay: {low: 1.0e-6, high: 1.0e-1, log: true}
  dropout: {low: 0.0, high: 0.6}
  width: {low: 8, high: 256, log: true}
  depth: {low: 1, high: 3}
  epochs: EPOCHS
"""
MO = """\
name: mo-PRUNER-SEED
data: {dataset: DATASET}
model: MODEL
search:
  sampler: tpe
  n_trials: BUDGET
  seed: SEED
  pruner: PRUNER
  objectives: [accuracy, {metric: n_params, direction: minimize}]
cv: {folds: 2}
tracking: {report: false, keep_checkpoints: 0}
params:
  lr: [0.0003, 0.001, 0.003, 0.01]
  width: [4, 8, 16]
  depth: {low: 1, high: 3}
  batch_size: [64, 128]
  epochs: EPOCHS
"""


def _fill(text: str, **kw: Any) -> str:
    for k, v in kw.items():
        text = text.replace(k.upper(), str(v))
    return text


def sampler_study(sampler: str, seed: int, marks: list[int], epochs: int, dataset: str,
                  cnn: bool = False) -> dict[str, Any]:
    """One seed's study of ``sampler``: run to each budget in ``marks`` in turn (a resume each time); with
    ``cnn`` the study of §4 (mnist_5k CNN, its discrete space) instead of the tabular one."""
    import hpo
    from hpo.spec import parse_spec

    out: dict[str, Any] = {"sampler": sampler, "seed": seed, "best_cv": {}, "test": {}, "wall_s": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        if cnn:
            from benchmarks.search_efficiency import SPEC as CNN

            text = _fill(CNN, sampler=sampler, seed=seed, budget=marks[0], epochs=epochs, pruner="none")
        else:
            text = _fill(TABULAR, sampler=sampler, seed=seed, budget=marks[0], epochs=epochs, dataset=dataset)
        spec = parse_spec(text)
        for i, n in enumerate(marks):
            t0 = time.perf_counter()
            res = hpo.run(spec, tracking_uri=f"sqlite:///{tmp}/mlflow.db", resume=i > 0, n_trials=n)
            out["wall_s"] += time.perf_counter() - t0
            out["best_cv"][n], out["test"][n] = res.best_value, res.test_metrics.get("accuracy")
    out["wall_s"] = round(out["wall_s"], 1)
    return out


def hypervolume(points: list[tuple[float, float]]) -> float:
    """The area dominated by ``points`` (accuracy to maximise, scaled size to minimise, both in [0, 1])
    above the reference point (accuracy 0, size 1)."""
    area, best_acc = 0.0, 0.0
    for acc, size in sorted(points, key=lambda p: p[1]):  # smallest model first
        if acc > best_acc:
            area += (acc - best_acc) * (1.0 - size)
            best_acc = acc
    return area


def mo_study(pruner: str, seed: int, budget: int, epochs: int, dataset: str, model: str,
             marks: list[int]) -> dict[str, Any]:
    """One seed's multi-objective study; the hypervolume after each of ``marks`` trials and the epochs trained."""
    import optuna

    import hpo
    from hpo.models import build_model
    from hpo.params import default_value, param_names
    from hpo.selection import front
    from hpo.spec import parse_spec
    from hpo.tracking import optuna_storage_for

    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        spec = parse_spec(_fill(MO, pruner=pruner, seed=seed, budget=budget, epochs=epochs, dataset=dataset,
                                model=model))
        t0 = time.perf_counter()
        res = hpo.run(spec, tracking_uri=store)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name=spec.name, storage=optuna_storage_for(store))
        trials, n_front = sorted(study.trials, key=lambda t: t.number), len(front(study))
    shape = (1, 28, 28) if dataset == "mnist_5k" else (64,)
    defaults = {name: default_value(name, model) for name in param_names(model)}
    biggest = sum(p.numel() for p in build_model(model, input_shape=shape, n_outputs=10,
                                                 params={**defaults, "width": 16, "depth": 3}).parameters())
    hv = {}
    for n in marks:
        done = [t for t in trials[:n] if t.state.name == "COMPLETE"]
        hv[n] = hypervolume([(t.values[0], t.values[1] / biggest) for t in done])
    epochs_trained = sum(len(t.user_attrs.get("hpo.curve", {})) for t in trials) * 2
    return {"pruner": pruner, "seed": seed, "hypervolume": hv, "epochs": epochs_trained, "wall_s": round(wall, 1),
            "n_pruned": res.counts.get("pruned", 0), "front": n_front, "test": res.test_metrics.get("accuracy")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="iris, tpe and gp, 1 seed, 2 and 3 trials; the MO part on "
                    "the digits MLP, 3 trials")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--mo-seeds", type=int, default=3)
    ap.add_argument("--mo-budget", type=int, default=12)
    ap.add_argument("--mo-epochs", type=int, default=4)
    ap.add_argument("--cnn", action="store_true", help="part a on §4's mnist_5k CNN study (tpe, gp, qmc, random; "
                    "budgets 12 and 30)")
    ap.add_argument("--part", choices=("a", "b", "both"), default="both",
                    help="a: samplers, b: multi-objective pruning (each writes its own section)")
    return C.run_main(ap, argv, _main)


def _main(args) -> dict[str, Any]:
    marks, seeds, epochs, dataset, samplers_run = [12, 30, 60], args.seeds, args.epochs, "digits", SAMPLERS
    mo_seeds, mo_budget, mo_epochs, mo_data, mo_model = args.mo_seeds, args.mo_budget, args.mo_epochs, "mnist_5k", "cnn"
    if args.quick:
        marks, seeds, epochs, dataset, samplers_run = [2, 3], 1, 1, "iris", SAMPLERS[:2]
        mo_seeds, mo_budget, mo_epochs, mo_data, mo_model = 1, 3, 2, "digits", "mlp"
    mo_marks = sorted({max(1, mo_budget // 2), mo_budget})
    mach, vers = C.machine(), C.versions()
    t0 = time.perf_counter()
    studies: dict[str, list[dict[str, Any]]] = {s: [] for s in samplers_run}
    if args.cnn:
        marks, dataset, samplers_run = [12, 30], "mnist_5k", ("tpe", "gp", "qmc", "random")
    if args.part == "b":
        seeds = 0
    for seed in range(seeds):  # interleaved: every sampler for each seed
        for s in samplers_run:
            studies[s].append(sampler_study(s, seed, marks, epochs, dataset, cnn=args.cnn))
    a_wall = time.perf_counter() - t0
    samplers = {s: {"best_cv": {n: C.summarize([r["best_cv"][n] for r in rs], 4) for n in marks},
                    "test": {n: C.summarize([r["test"][n] for r in rs], 4) for n in marks},
                    "wall_s": C.summarize([r["wall_s"] for r in rs], 1)} for s, rs in studies.items() if rs}
    if args.part == "a":
        mo_seeds = 0
    t0 = time.perf_counter()
    mo_runs: dict[str, list[dict[str, Any]]] = {"none": [], "successive_halving": []}
    for seed in range(mo_seeds):
        for p in mo_runs:
            mo_runs[p].append(mo_study(p, seed, mo_budget, mo_epochs, mo_data, mo_model, mo_marks))
    b_wall = time.perf_counter() - t0
    for k, r in enumerate(mo_runs["successive_halving"]):
        ref = mo_runs["none"][k]
        r["ratio_epochs"] = round(r["epochs"] / ref["epochs"], 3)
        r["hv_delta"] = round(r["hypervolume"][mo_budget] - ref["hypervolume"][mo_budget], 4)
    mo = {} if not mo_seeds else {p: {"hypervolume": {n: C.summarize([r["hypervolume"][n] for r in rs], 4) for n in mo_marks},
              "epochs": C.summarize([r["epochs"] for r in rs], 0), "n_pruned": C.summarize([r["n_pruned"] for r in rs], 0),
              "wall_s": C.summarize([r["wall_s"] for r in rs], 1), "runs": rs} for p, rs in mo_runs.items()}
    result = {"benchmark": "samplers", "quick": args.quick, "machine": mach, "versions": vers, "marks": marks,
              "seeds": seeds, "epochs": epochs, "dataset": dataset, "cnn": args.cnn, "part_a_wall_s": round(a_wall, 1),
              "samplers": samplers, "studies": studies, "mo": mo, "mo_marks": mo_marks, "mo_seeds": mo_seeds,
              "mo_budget": mo_budget, "mo_epochs": mo_epochs, "mo_data": mo_data, "part_b_wall_s": round(b_wall, 1)}
    if not args.quick:
        if samplers:
            C.write_section("samplers_cnn" if args.cnn else "samplers", render_samplers(result))
        if mo:
            C.write_section("mo_pruning", render_mo(result))
    C.emit(result)
    return result


def render_samplers(r: dict[str, Any]) -> str:
    marks = r["marks"]
    rows = [[f"`{s}`", *[C.med_range(c["best_cv"][n], 4) for n in marks], *[C.med_range(c["test"][n], 4) for n in marks],
             C.med_range(c["wall_s"], 0)] for s, c in r["samplers"].items()]
    cmd = f"python -m benchmarks.samplers --part a --seeds {r['seeds']} --epochs {r['epochs']}"
    if r.get("cnn"):
        cmd += " --cnn"
        title = "## 4b'. Samplers at 12 and 30 trials on §4's CNN study"
        what = (f"§4's mnist_5k CNN study (its 144-point discrete space), 2-fold CV, {r['epochs']} epochs, "
                "one trial at a time, ")
    else:
        title = "## 4b. Samplers at 12, 30 and 60 trials"
        what = (f"{r['dataset']} MLP, 3-fold CV, {r['epochs']} epochs, space lr [1e-4, 0.3] log × weight_decay "
                "[1e-6, 0.1] log × dropout [0, 0.6] × width [8, 256] log (int) × depth 1–3, one trial at a time, ")
    last = marks[-1]
    return "\n".join([
        title, "", C.env_block(r["machine"], r["versions"], cmd),
        what +
        f"seeds 0–{r['seeds'] - 1}, samplers interleaved per seed; each study resumed from "
        f"{' to '.join(str(m) for m in marks)} trials with a refit after each (best CV after {last}: the whole "
        f"study). Median (min–max) over seeds; it took {r['part_a_wall_s']:.0f} s.",
        "", C.table(["sampler", *[f"best CV after {n}" for n in marks], *[f"test acc after {n}" for n in marks],
                    "wall s (all)"], rows)])


def render_mo(r: dict[str, Any]) -> str:
    sh = r["mo"]["successive_halving"]["runs"]
    rows = [[f"`{p}`", *[C.med_range(c["hypervolume"][n], 4) for n in r["mo_marks"]], C.med_range(c["epochs"], 0),
             C.med_range(c["n_pruned"], 0), C.med_range(c["wall_s"], 0)] for p, c in r["mo"].items()]
    cmd = (f"python -m benchmarks.samplers --part b --mo-seeds {r['mo_seeds']} --mo-budget {r['mo_budget']} "
           f"--mo-epochs {r['mo_epochs']}")
    return "\n".join([
        "## 4c. Several objectives: accuracy against n_params, with and without pruning", "",
        C.env_block(r["machine"], r["versions"], cmd),
        f"{r['mo_data']} CNN (width 4–16, depth 1–3, lr and batch size listed), objectives accuracy (max) and "
        f"n_params (min), TPE, {r['mo_budget']} trials × {r['mo_epochs']} epochs, 2-fold CV, seeds "
        f"0–{r['mo_seeds'] - 1}; pruning is successive halving on the first objective's fold mean per epoch. "
        "Hypervolume of the front against the reference point (accuracy 0, n_params of the largest model), "
        "n_params scaled by that model's; 'fold-epochs' are epochs trained × 2 folds over all trials. "
        f"Median (min–max) over seeds; it took {r['part_b_wall_s']:.0f} s.", "",
        C.table(["pruner", *[f"hypervolume after {n}" for n in r["mo_marks"]], "fold-epochs", "pruned", "wall s"],
                rows), "",
        "Per seed, successive halving against no pruning: fold-epochs × "
        + ", ".join(C.fmt(x["ratio_epochs"]) for x in sh) + "; hypervolume after "
        f"{r['mo_budget']} trials minus no pruning's: " + ", ".join(f"{x['hv_delta']:+.4f}" for x in sh) + "."])


if __name__ == "__main__":
    main()
