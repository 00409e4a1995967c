"""hpo's overhead over a bare PyTorch loop on the reference study (issue #5).

    python -m benchmarks.overhead [--quick] [--repeats 3]

The reference study (SPEC below): digits, MLP, 3 folds, 20 epochs, 16 TPE trials, seed 0.

(a) hpo with full tracking (``hpo.run(spec, tracking_uri=sqlite:///{tmp}/mlflow.db)``), local
    executor, ``max_concurrent_trials`` 1 and 2 (2 = hpo's thread pool).
(b) the floor: the very same parameter sets (read back from the Optuna study hpo wrote), the
    same folds (``hpo.folds.make_folds`` with the same seed) and epochs, the same model
    (``hpo.models.build_model``) and optimizer, trained by the bare loop below (batches by
    index gather, one validation pass per epoch to find each fold's best epoch, then a refit of
    the best on all training data for the mean best epoch and one test pass, as hpo does) --
    no Optuna, no MLflow, no progress bar. Concurrency 2 = two Python threads (like hpo's local
    executor), each training whole trials.

Runs are interleaved per repeat: hpo c1, floor c1, hpo c2, floor c2. hpo's wall time is also
broken into phases by wrapping StudyRunner and SearchLoop methods from outside (nothing in hpo is edited).
"""

from __future__ import annotations

from benchmarks import _common as C  # first: with __main__, the thread settings precede numpy/torch

if __name__ == "__main__":
    C.early_threads()

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

SPEC = """\
name: overhead-ref
data:
  dataset: digits
  test_size: 0.2
model: mlp
search:
  sampler: tpe
  n_trials: 16
  seed: 0
  metric: accuracy
cv:
  folds: 3
params:
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  width: [64, 128]
  depth: {low: 1, high: 2}
  dropout: {low: 0.0, high: 0.3}
  batch_size: [64, 128]
  optimizer: adam
  epochs: EPOCHS
tracking:
  keep_checkpoints: 1
"""


# The same MLP as a user's model factory (issue #13): hpo imports it from the spec's folder
FACTORY = """\
from torch import nn


def build(input_shape, n_outputs, width: int = 128, depth: int = 2, dropout: float = 0.0):
    n_in = 1
    for d in input_shape:
        n_in *= d
    layers = [nn.Flatten()]
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(width if depth else n_in, n_outputs))
    return nn.Sequential(*layers)
"""
FACTORY_MODEL = """model:
  factory: benchnets:build
  params:
    width: [64, 128]
    depth: {low: 1, high: 2}
    dropout: {low: 0.0, high: 0.3}
"""


def make_spec(epochs: int, n_trials: int, concurrency: int, tracking_uri: str, factory_dir: str | None = None):
    """The reference study; with ``factory_dir`` its MLP is a user factory written into that folder."""
    from pathlib import Path

    from hpo.spec import parse_spec

    text = SPEC.replace("EPOCHS", str(epochs)).replace("n_trials: 16", f"n_trials: {n_trials}")
    source = None
    if factory_dir is not None:
        (Path(factory_dir) / "benchnets.py").write_text(FACTORY)
        for line in ("  width: [64, 128]\n", "  depth: {low: 1, high: 2}\n", "  dropout: {low: 0.0, high: 0.3}\n"):
            text = text.replace(line, "")
        text = text.replace("model: mlp\n", FACTORY_MODEL)
        source = str(Path(factory_dir) / "spec.yaml")
    spec = parse_spec(text, source)
    return spec.replace(tracking_uri=tracking_uri, max_concurrent_trials=concurrency)


# --------------------------------------------------------------------------- (a) hpo, timed by phase


def run_hpo(epochs: int, n_trials: int, concurrency: int, factory: bool = False) -> dict[str, Any]:
    import optuna

    import hpo.data
    import hpo.executors.local as local
    import hpo.loop as hl
    import hpo.refit
    import hpo.study as hs
    import hpo.tracking as ht
    from hpo.epochs import EpochSink

    with tempfile.TemporaryDirectory() as tmp, C.PhaseTimer() as t:
        uri = f"sqlite:///{tmp}/mlflow.db"
        spec = make_spec(epochs, n_trials, concurrency, uri, factory_dir=tmp if factory else None)
        for attr in ("_prepare", "_search"):
            t.wrap(hs.StudyRunner, attr)
        for attr in ("_launch", "_finish"):
            t.wrap(hl.SearchLoop, attr)
        t.wrap(hs.StudyRunner, "_finale", "_refit")  # refit + logging + report (hpo.refit)
        t.wrap(ht.Tracker, "log_model", "_log_model")
        t.wrap(hpo.refit, "write_study_report", "_report")
        t.wrap(hpo.data, "load_spec_dataset", "data_load")
        t.wrap(ht.Tracker, "__init__", "mlflow_store_open")
        t.wrap(ht.Tracker, "start_study", "mlflow_parent_run")
        t.wrap(optuna, "create_study", "optuna_create_study")
        t.wrap(optuna, "get_all_study_summaries", "optuna_list_studies")
        t.wrap(ht, "lineage_tags", "lineage_git")
        t.wrap(local, "train", "trial_run")  # crossval.train: run_trial, or a user objective
        t.wrap(EpochSink, "epoch", "epoch_sink")
        t.wrap(EpochSink, "end", "epoch_sink")  # the trial's last curve batch
        t.wrap(local.LocalExecutor, "refit", "refit_training")
        t0 = time.perf_counter()
        result = hpo.run(spec, tracking_uri=uri)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{tmp}/optuna.db")
        params = [(tr.number, dict(tr.params)) for tr in sorted(study.trials, key=lambda x: x.number)]
    ph = dict(t.totals)
    trial_train = sum(r.duration_s for r in result.trials)
    prep_other = ph["_prepare"] - ph.get("data_load", 0) - ph.get("mlflow_store_open", 0) \
        - ph.get("mlflow_parent_run", 0) - ph.get("optuna_create_study", 0) - ph.get("optuna_list_studies", 0) \
        - ph.get("lineage_git", 0)
    phases = {
        "data_load": ph.get("data_load", 0.0),
        "mlflow_store_open (incl. schema migration)": ph.get("mlflow_store_open", 0.0),
        "optuna_store (list + create study)": ph.get("optuna_create_study", 0.0) + ph.get("optuna_list_studies", 0.0),
        "lineage (git rev-parse)": ph.get("lineage_git", 0.0),
        "mlflow_parent_run": ph.get("mlflow_parent_run", 0.0),
        "prepare_other (folds, fold data, sink, executor)": prep_other,
        "search": ph["_search"],
        "  trials: run_trial wall, summed": trial_train,
        "  of which epoch sink (MLflow log_batch + Optuna report/prune), summed": ph.get("epoch_sink", 0.0),
        "  driver: ask + child run (_launch minus inline trial)": ph["_launch"] - (trial_train if concurrency == 1 else 0),
        "  driver: tell + end child run + checkpoint (_finish)": ph["_finish"],
        "refit_training (+ test)": ph.get("refit_training", 0.0),
        "model_logging (mlflow.pytorch.log_model + registry)": ph.get("_log_model", 0.0),
        "report plots (_report)": ph.get("_report", 0.0),
        "refit_other (checkpoint, summary, trials.csv)": ph["_refit"] - ph.get("refit_training", 0)
        - ph.get("_log_model", 0) - ph.get("_report", 0),
        "outside phases (run() glue, end_study, close)": wall - ph["_prepare"] - ph["_search"] - ph["_refit"],
    }
    return {"wall_s": wall, "best_cv": result.best_value, "test": result.test_metrics.get("accuracy"),
            "params": params, "phases_s": {k: round(v, 3) for k, v in phases.items()},
            "search_s": ph["_search"], "trial_train_s": trial_train}


# --------------------------------------------------------------------------- (b) the floor: a bare loop


def _resolve(spec, sampled: dict[str, Any]) -> dict[str, Any]:
    from hpo import space

    return space.resolve(spec, sampled)


def bare_fold(x: torch.Tensor, y: torch.Tensor, tr: torch.Tensor, va: torch.Tensor | None,  # noqa: F821
              p: dict[str, Any], epochs: int, seed: int, n_classes: int):
    """Train one model on x[tr] for ``epochs``; returns (best val accuracy, best epoch, model)."""
    import torch

    from hpo.models import build_model

    xt = x[tr]
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    mean, std = xt.mean(dim=dims, keepdim=True), xt.std(dim=dims, keepdim=True).clamp_min(1e-6)
    xs = (x - mean) / std
    torch.manual_seed(seed)
    model = build_model("mlp", input_shape=tuple(x.shape[1:]), n_outputs=n_classes, params=p)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    bs = int(p["batch_size"])
    best, best_epoch = -1.0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        for s in range(0, len(perm), bs):
            idx = perm[s:s + bs]
            loss = loss_fn(model(xs[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if va is not None:
            model.eval()
            with torch.inference_mode():
                acc = float((model(xs[va]).argmax(1) == y[va]).float().mean())
            if acc > best:
                best, best_epoch = acc, epoch
    return best, best_epoch, model, (mean, std)


def run_floor(epochs: int, params: list[tuple[int, dict[str, Any]]], concurrency: int) -> dict[str, Any]:
    import torch

    from hpo.data import load_dataset
    from hpo.folds import make_folds

    spec = make_spec(epochs, len(params), concurrency, "sqlite:///unused/mlflow.db")
    t0 = time.perf_counter()
    ds = load_dataset("digits", seed=0, test_size=0.2)
    folds = make_folds(ds.y_train, 3, 0, True, ds.class_names)
    x, y = torch.as_tensor(ds.x_train).float(), torch.as_tensor(ds.y_train).long()
    fidx = [(torch.as_tensor(a), torch.as_tensor(b)) for a, b in folds]

    def trial(item: tuple[int, dict[str, Any]]) -> tuple[float, list[int], dict[str, Any]]:
        number, sampled = item
        p = _resolve(spec, sampled)
        res = [bare_fold(x, y, tr, va, p, epochs, 1_000_003 * 0 + number * 101 + k, ds.n_classes)
               for k, (tr, va) in enumerate(fidx)]
        return float(np.mean([r[0] for r in res])), [r[1] for r in res], p

    if concurrency == 1:
        out = [trial(it) for it in params]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            out = list(pool.map(trial, params))
    trials_s = time.perf_counter() - t0
    best = max(out, key=lambda r: r[0])
    refit_epochs = max(1, round(float(np.mean(best[1]))))
    _, _, model, (mean, std) = bare_fold(x, y, torch.arange(len(x)), None, best[2], refit_epochs, 7, ds.n_classes)
    model.eval()
    with torch.inference_mode():
        xte = (torch.as_tensor(ds.x_test).float() - mean) / std
        test = float((model(xte).argmax(1) == torch.as_tensor(ds.y_test)).float().mean())
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "trials_s": trials_s, "best_cv": best[0], "test": test}


def import_cost() -> dict[str, float]:
    """Fresh-interpreter import time of what `hpo run` loads vs a bare torch script (one sample each)."""
    out = {}
    for name, code in (("torch", "import torch"),
                       ("hpo_stack", "import hpo.study, hpo.trial, hpo.tracking, mlflow, optuna, torch, sklearn")):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=C.ROOT)
        out[name] = round(time.perf_counter() - t0, 2)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 trials x 2 epochs, once")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", default="1,2")
    return C.run_main(ap, argv, _main)


def _main(args) -> dict[str, Any]:
    epochs, n_trials = (2, 2) if args.quick else (20, 16)
    repeats = 1 if args.quick else args.repeats
    concs = [int(c) for c in args.concurrency.split(",")]
    mach, vers = C.machine(), C.versions()

    # warm-up (imports, lazy inits, MLflow's first schema creation code paths): not measured
    w = run_hpo(1, 2, 1)
    run_floor(1, w["params"], 1)

    runs: dict[str, list[dict[str, Any]]] = {f"{k}_c{c}": [] for c in concs for k in ("hpo", "floor")}
    runs["hpo_factory_c1"] = []
    for _ in range(repeats):
        for c in concs:
            h = run_hpo(epochs, n_trials, c)
            h["load"] = C.loadavg()
            runs[f"hpo_c{c}"].append(h)
            f = run_floor(epochs, h["params"], c)
            f["load"] = C.loadavg()
            runs[f"floor_c{c}"].append(f)
            if c == 1:  # the same study with the MLP as a user factory, interleaved with the built-in
                h = run_hpo(epochs, n_trials, 1, factory=True)
                h["load"] = C.loadavg()
                runs["hpo_factory_c1"].append(h)

    summary: dict[str, Any] = {}
    for c in concs:
        hw = [r["wall_s"] for r in runs[f"hpo_c{c}"]]
        fw = [r["wall_s"] for r in runs[f"floor_c{c}"]]
        ratios = [a / b for a, b in zip(hw, fw, strict=True)]
        search_ratios = [h["search_s"] / f["trials_s"] for h, f in zip(runs[f"hpo_c{c}"], runs[f"floor_c{c}"], strict=True)]
        phases = {k: C.summarize([r["phases_s"][k] for r in runs[f"hpo_c{c}"]])["median"]
                  for k in runs[f"hpo_c{c}"][0]["phases_s"]}
        summary[f"c{c}"] = {
            "hpo_wall_s": C.summarize(hw), "floor_wall_s": C.summarize(fw),
            "ratio_hpo_over_floor": C.summarize(ratios), "ratio_search_over_floor_trials": C.summarize(search_ratios),
            "hpo_best_cv": C.summarize([r["best_cv"] for r in runs[f"hpo_c{c}"]], 4),
            "hpo_test": C.summarize([r["test"] for r in runs[f"hpo_c{c}"]], 4),
            "floor_best_cv": C.summarize([r["best_cv"] for r in runs[f"floor_c{c}"]], 4),
            "floor_test": C.summarize([r["test"] for r in runs[f"floor_c{c}"]], 4),
            "hpo_phases_median_s": phases,
            "target_met": C.summarize(ratios)["median"] <= 1.05,
        }
    if runs["hpo_factory_c1"]:
        fw = [r["wall_s"] for r in runs["hpo_factory_c1"]]
        bw = [r["wall_s"] for r in runs["hpo_c1"]]
        summary["factory_c1"] = {
            "hpo_factory_wall_s": C.summarize(fw), "hpo_builtin_wall_s": C.summarize(bw),
            "ratio_factory_over_builtin": C.summarize([a / b for a, b in zip(fw, bw, strict=True)]),
            "search_ratio_factory_over_builtin": C.summarize(
                [a["search_s"] / b["search_s"] for a, b in zip(runs["hpo_factory_c1"], runs["hpo_c1"], strict=True)]),
            "hpo_factory_best_cv": C.summarize([r["best_cv"] for r in runs["hpo_factory_c1"]], 4),
            # what hpo adds around training (the overhead proper); training itself differs with the
            # architectures TPE draws under other parameter names
            "hpo_factory_non_training_s": C.summarize([r["wall_s"] - r["trial_train_s"] for r in runs["hpo_factory_c1"]]),
            "hpo_builtin_non_training_s": C.summarize([r["wall_s"] - r["trial_train_s"] for r in runs["hpo_c1"]]),
        }
    result = {"benchmark": "overhead", "quick": args.quick, "machine": mach, "versions": vers,
              "epochs": epochs, "n_trials": n_trials, "repeats": repeats, "summary": summary,
              "import_cost_s": None if args.quick else import_cost(),
              "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "params"} for r in v] for k, v in runs.items()}}
    C.emit(result)
    if not args.quick:
        C.write_section("overhead", render(result))
    return result


def render(r: dict[str, Any]) -> str:
    s = {k: v for k, v in r["summary"].items() if k.startswith("c")}
    fac = r["summary"].get("factory_c1")
    lines = ["## 1. Overhead: hpo vs a bare PyTorch loop (reference study)", "",
             C.env_block(r["machine"], r["versions"], "python -m benchmarks.overhead --repeats "
                         f"{r['repeats']}"),
             f"Reference study: digits (1,437 train / 360 test), MLP (width [64, 128], depth 1–2, dropout 0–0.3, "
             f"lr log 1e-3–3e-2, batch_size [64, 128], adam), 3 folds, {r['epochs']} epochs, "
             f"{r['n_trials']} TPE trials, seed 0. hpo: `hpo.run` with full tracking into a fresh sqlite store "
             "(child run per trial, per-epoch curves, top-1 checkpoint, refit, logged + registered model). "
             "Floor: the same parameter sets, folds, epochs, model and optimizer in a bare loop "
             "(`benchmarks/overhead.py: bare_fold`), including the refit of the best and one test pass; "
             "concurrency 2 = two threads for both. "
             f"{r['repeats']} repeats, interleaved (hpo c1, floor c1, hpo c2, floor c2); median (min–max).", "",
             C.table(["concurrency", "hpo wall s", "floor wall s", "hpo / floor", "search / floor trials",
                      "target ≤ 1.05", "hpo best CV / test", "floor best CV / test"],
                     [[k[1:], C.med_range(v["hpo_wall_s"]), C.med_range(v["floor_wall_s"]),
                       C.med_range(v["ratio_hpo_over_floor"], 3), C.med_range(v["ratio_search_over_floor_trials"], 3),
                       "met" if v["target_met"] else "**not met**",
                       f"{v['hpo_best_cv']['median']:.4f} / {v['hpo_test']['median']:.4f}",
                       f"{v['floor_best_cv']['median']:.4f} / {v['floor_test']['median']:.4f}"]
                      for k, v in s.items()]), "",
             "Where hpo's wall time goes (median seconds over repeats; phases timed by wrapping "
             "`StudyRunner._prepare/_search/_refit`, `SearchLoop._launch/_finish`, `_log_model` and a few functions from "
             "outside; indented rows are parts of `search`; at concurrency 2 the trial rows are sums over "
             "two threads, so they exceed the search wall):", ""]
    keys = list(next(iter(s.values()))["hpo_phases_median_s"])
    lines.append(C.table(["phase", *[f"c{k[1:]} s" for k in s]],
                         [[k.replace("  ", "↳ "), *[C.fmt(s[c]["hpo_phases_median_s"][k], 3) for c in s]] for k in keys]))
    if fac:
        lines += ["", "The same study with the MLP written as a user's model factory (`model: {factory: "
                  "benchnets:build, params: {width, depth, dropout}}`, `FACTORY` in `benchmarks/overhead.py`), "
                  "interleaved with the built-in at concurrency 1:", "",
                  C.table(["hpo factory wall s", "hpo built-in wall s", "factory / built-in",
                           "search: factory / built-in", "non-training s: factory / built-in", "factory best CV"],
                          [[C.med_range(fac["hpo_factory_wall_s"]), C.med_range(fac["hpo_builtin_wall_s"]),
                            C.med_range(fac["ratio_factory_over_builtin"], 3),
                            C.med_range(fac["search_ratio_factory_over_builtin"], 3),
                            f"{C.med_range(fac['hpo_factory_non_training_s'])} / "
                            f"{C.med_range(fac['hpo_builtin_non_training_s'])}",
                            f"{fac['hpo_factory_best_cv']['median']:.4f}"]]), "",
                  "Non-training = wall time minus the trials' summed training (`run_trial`): what hpo adds "
                  "around the model (set-up, ask/tell, child runs, curves, checkpoints, refit, logging, report). "
                  "The factory's parameters are named `model.width` etc., so TPE draws another sequence of "
                  "architectures than for the built-in and the trials' training time differs with them."]
    if r.get("import_cost_s"):
        ic = r["import_cost_s"]
        lines += ["", f"Not in the numbers above (measured once in a fresh interpreter): importing what `hpo run` "
                  f"needs takes {ic['hpo_stack']} s vs {ic['torch']} s for `import torch` alone."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
