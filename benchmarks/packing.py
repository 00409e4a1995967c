"""Fold packing (``execution.pack_folds``): a trial's k fold models trained as one stacked model vs one
after another.

    python -m benchmarks.packing [--quick] [--repeats 3] [--device cpu|cuda] [--threads 1]

(a) The reference study of ``benchmarks/overhead.py`` (its SPEC: digits, MLP, 3 folds, 20 epochs,
    16 TPE trials, seed 0), written as YAML into a temporary folder with a sqlite tracking store
    there: the whole ``hpo.run`` with ``execution.pack_folds: true`` vs ``false``; then the training
    phase alone: the 16 parameter sets the study drew (read back from its Optuna storage), the same
    folds and data (``hpo.crossval.FoldData``), each trained by ``hpo.crossval.run_trial`` with
    ``TrialSpec(pack=True)`` vs ``pack=False``, summed. Every trial's per-fold best values (and
    per-epoch fold training losses) are compared packed vs unpacked: the built-in MLP packed is
    meant to be bit-identical, so the expected difference is 0.
(b) Convolutional models, where packing runs the folds under ``torch.func.vmap`` (grouped
    convolutions): the CNN (``model: cnn``) on ``mnist_5k`` and ResNet-20 (``model: resnet``, depth
    20) on ``digits`` (already 1x8x8 images), 3 folds, 3 fixed parameter sets each (``CONV_TRIALS``),
    a few epochs, timed with ``run_trial`` packed vs unpacked. Their values agree only within float
    noise, so the script also measures a float-noise yardstick: the same unpacked trial once more with
    torch's oneDNN (mkldnn) CPU backend switched off (cuDNN on CUDA), i.e. the same fp32 convolutions
    (and BatchNorm/pooling) computed by torch's native kernels in another summation order, nothing
    else changed. A packed-vs-unpacked difference no larger than that one is "within float noise".

Variants are interleaved per repeat (packed, unpacked, packed, unpacked, ...) after a warm-up of
each; medians (min-max) and ratios of medians are reported. Every contender runs with ``--threads``
torch/OpenMP threads (default 1, see ``_common.pinned_threads``). Prints JSON; without ``--quick``
it rewrites the ``packing`` section of BENCHMARKS.md.
"""

from __future__ import annotations

from benchmarks import _common as C  # first: with __main__, the thread settings precede numpy/torch

if __name__ == "__main__":
    C.early_threads()

import argparse
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VARIANTS = ("packed", "unpacked")

# (b): fixed parameter sets; everything not named takes hpo's default for the model
CONV_TRIALS: dict[str, dict[str, Any]] = {
    "cnn": {"dataset": "mnist_5k", "model": "cnn", "epochs": 2, "quick_epochs": 1, "quick_n": 900, "trials": [
        {"depth": 2, "width": 16, "batch_size": 128, "optimizer": "adam", "lr": 3e-3},
        {"depth": 3, "width": 8, "batch_size": 64, "optimizer": "adamw", "lr": 1e-3, "dropout": 0.2,
         "weight_decay": 1e-4},
        {"depth": 2, "width": 8, "batch_size": 128, "optimizer": "adam", "lr": 3e-3, "augment": True},
    ]},
    "resnet20": {"dataset": "digits", "model": "resnet", "epochs": 3, "quick_epochs": 1, "quick_n": None, "trials": [
        {"depth": 20, "width": 16, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
        {"depth": 20, "width": 8, "batch_size": 64, "optimizer": "adamw", "lr": 3e-3, "scheduler": "cosine"},
        {"depth": 20, "width": 16, "batch_size": 64, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
         "nesterov": True, "grad_clip": 1.0},
    ]},
}


# --------------------------------------------------------------------------- one trial, packed or not


def train_trial(spec, fd, pack: bool) -> dict[str, Any]:
    """``run_trial`` of ``spec`` (a TrialSpec) with ``pack``; wall time, fold values, per-epoch fold losses."""
    import dataclasses

    from hpo.crossval import run_trial
    from hpo.trial import Verdict

    losses: list[list[float]] = []  # per epoch, each fold's mean training loss

    def on_epoch(epoch: int, metrics: dict[str, float]) -> Verdict:
        losses.append([v for k, v in sorted(metrics.items()) if k.startswith("fold") and k.endswith("/train_loss")])
        return Verdict.GO

    t0 = time.perf_counter()
    r = run_trial(dataclasses.replace(spec, pack=pack), fd, on_epoch)
    wall = time.perf_counter() - t0
    return {"s": wall, "state": r.state, "reason": r.reason, "packed": r.packed or "false",
            "fold_values": list(r.fold_values), "best_epochs": list(r.fold_best_epochs), "train_losses": losses,
            "states": (r.checkpoint or {}).get("folds", [])}


def weight_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float | None:
    """Largest |a - b| over every trial's best-epoch fold weights (None where a trial has none)."""
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        if not ra["states"] or len(ra["states"]) != len(rb["states"]):
            return None
        for sa, sb in zip(ra["states"], rb["states"], strict=True):
            worst = max(worst, *(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa))
    return worst


def drop_states(*runs: list[dict[str, Any]]) -> None:
    """The weights are compared; they do not go into the JSON."""
    for rs in runs:
        for r in rs:
            r.pop("states", None)


def max_diff(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str, epoch: int | None = None) -> float | None:
    """Largest |a - b| over trials and folds of ``key`` (``train_losses``: of epoch ``epoch``, 1-based,
    or of every epoch when None); None when a pair does not line up (a trial failed)."""
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        va, vb = ra[key], rb[key]
        if key == "train_losses":
            va, vb = (va, vb) if epoch is None else (va[epoch - 1:epoch], vb[epoch - 1:epoch])
            va, vb = [x for row in va for x in row], [x for row in vb for x in row]
        if len(va) != len(vb) or not va:
            return None
        worst = max(worst, *(abs(x - y) for x, y in zip(va, vb, strict=True)))
    return worst


@contextlib.contextmanager
def other_kernels(device: str) -> Iterator[str]:
    """The float-noise yardstick: torch's oneDNN CPU backend (cuDNN on CUDA) off, so convolutions,
    BatchNorm and pooling run on torch's native kernels: the same fp32 arithmetic, summed in another order."""
    import torch

    backend = torch.backends.cudnn if device.startswith("cuda") else torch.backends.mkldnn
    before = backend.enabled
    backend.enabled = False
    try:
        yield "cudnn off" if device.startswith("cuda") else "mkldnn (oneDNN) off"
    finally:
        backend.enabled = before


# --------------------------------------------------------------------------- (a) the reference study


def study_text(epochs: int, n_trials: int, pack: bool, device: str) -> str:
    from benchmarks.overhead import SPEC

    text = SPEC.replace("EPOCHS", str(epochs)).replace("n_trials: 16", f"n_trials: {n_trials}")
    return text + f"execution:\n  pack_folds: {'true' if pack else 'false'}\n  device: {device}\n"


def run_study(epochs: int, n_trials: int, pack: bool, device: str) -> dict[str, Any]:
    """``hpo.run`` of the reference study with ``pack_folds: pack`` into a fresh sqlite store."""
    import optuna

    import hpo
    import hpo.study as hs

    with tempfile.TemporaryDirectory() as tmp, C.PhaseTimer() as t:
        path = Path(tmp) / "spec.yaml"
        path.write_text(study_text(epochs, n_trials, pack, device), encoding="utf-8")
        uri = f"sqlite:///{tmp}/mlflow.db"
        t.wrap(hs.StudyRunner, "_search")
        t0 = time.perf_counter()
        res = hpo.run(str(path), tracking_uri=uri)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name=res.name, storage=f"sqlite:///{tmp}/optuna.db")
        params = [(tr.number, dict(tr.params)) for tr in sorted(study.trials, key=lambda x: x.number)]
    trials = sorted(res.trials, key=lambda r: r.number)
    return {"wall_s": wall, "search_s": t.totals["_search"], "trial_train_s": sum(r.duration_s for r in trials),
            "best_cv": res.best_value, "test": res.test_metrics.get("accuracy"), "params": params,
            "trials": [{"number": r.number, "state": r.state, "packed": r.packed or "false",
                        "fold_values": list(r.fold_values), "train_losses": []} for r in trials]}


def reference_trials(epochs: int, params: list[tuple[int, dict[str, Any]]], device: str):
    """The reference study's FoldData and one TrialSpec per parameter set, as hpo's search loop builds them."""
    from hpo import space
    from hpo.crossval import FoldData
    from hpo.data import load_spec_dataset
    from hpo.folds import make_folds
    from hpo.spec import parse_spec
    from hpo.trial import TrainingSet, TrialSpec

    spec = parse_spec(study_text(epochs, len(params), False, device))
    ds = load_spec_dataset(spec)
    folds = make_folds(ds.y_train, spec.cv.folds, spec.search.seed, spec.task == "classification", ds.class_names)
    fd = FoldData.build(TrainingSet(ds.x_train, ds.y_train, ds.n_classes, folds, standardize=spec.data.standardize),
                        device)
    specs = [TrialSpec(number=n, params=space.resolve(spec, sampled), model=spec.model, metric=spec.metric,
                       direction=spec.direction, seed=spec.search.seed) for n, sampled in params]
    return fd, specs


def bench_reference(epochs: int, n_trials: int, repeats: int, device: str) -> dict[str, Any]:
    # warm-up (imports, MLflow schema code paths, the stacked forward's first call): not measured
    for pack in (True, False):
        run_study(1, 2, pack, device)
    studies: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            r = run_study(epochs, n_trials, v == "packed", device)
            r["load"] = C.loadavg()
            studies[v].append(r)
    params = studies["unpacked"][0]["params"]
    same_params = all(s["params"] == params for v in VARIANTS for s in studies[v])

    fd, specs = reference_trials(epochs, params, device)
    for pack in (True, False):
        train_trial(specs[0], fd, pack)  # warm-up
    training: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            trials = [train_trial(s, fd, v == "packed") for s in specs]
            training[v].append({"s": sum(t["s"] for t in trials), "trials": trials, "load": C.loadavg()})

    def ratios(key: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {v: C.summarize([r[key] for r in runs[v]]) for v in VARIANTS} | {
            "packed_over_unpacked": C.summarize([a[key] / b[key] for a, b in zip(runs["packed"], runs["unpacked"], strict=True)], 3)}

    tp, tu = training["packed"][0]["trials"], training["unpacked"][0]["trials"]
    sp, su = studies["packed"][0]["trials"], studies["unpacked"][0]["trials"]
    weights = weight_diff(tp, tu)
    drop_states(*(r["trials"] for v in VARIANTS for r in training[v]))
    return {
        "epochs": epochs, "n_trials": n_trials,
        "study": {"wall_s": ratios("wall_s", studies), "search_s": ratios("search_s", studies),
                  "trial_train_s": ratios("trial_train_s", studies),
                  "same_parameter_sets": same_params,
                  "packed_tags": sorted({t["packed"] for t in sp}), "unpacked_tags": sorted({t["packed"] for t in su}),
                  "fold_value_max_abs_diff": max_diff(sp, su, "fold_values") if same_params else None,
                  "best_cv": {v: C.summarize([r["best_cv"] for r in studies[v]], 4) for v in VARIANTS},
                  "test": {v: C.summarize([r["test"] for r in studies[v]], 4) for v in VARIANTS}},
        "training": {"s": ratios("s", training), "packed_tags": sorted({t["packed"] for t in tp}),
                     "fold_value_max_abs_diff": max_diff(tp, tu, "fold_values"),
                     "weights_max_abs_diff": weights,
                     "train_loss_max_abs_diff": max_diff(tp, tu, "train_losses"),
                     "best_epochs_equal": all(a["best_epochs"] == b["best_epochs"] for a, b in zip(tp, tu, strict=True)),
                     # the direct run_trial calls reproduce what the study's trials recorded
                     "rerun_vs_study_max_abs_diff": max(max_diff(tp, sp, "fold_values") or 0.0,
                                                        max_diff(tu, su, "fold_values") or 0.0) if same_params else None},
        "runs": {"study": {v: [{k: x for k, x in r.items() if k not in ("params", "trials")} for r in rs]
                           for v, rs in studies.items()},
                 "training_s": {v: [r["s"] for r in rs] for v, rs in training.items()}},
    }


# --------------------------------------------------------------------------- (b) convolutional models


def conv_setup(name: str, quick: bool, device: str):
    """FoldData (3 folds, seed 0) of the model's data set and its TrialSpecs."""
    import numpy as np

    from hpo.crossval import FoldData
    from hpo.data import load_dataset
    from hpo.folds import make_folds
    from hpo.params import PARAMS, default_value
    from hpo.trial import TrainingSet, TrialSpec

    cfg = CONV_TRIALS[name]
    ds = load_dataset(cfg["dataset"], seed=0, test_size=0.2)
    x, y = ds.x_train, ds.y_train
    if quick and cfg["quick_n"]:
        x, y = x[: cfg["quick_n"]], y[: cfg["quick_n"]]
    folds = make_folds(np.asarray(y), 3, 0, True, ds.class_names)
    fd = FoldData.build(TrainingSet(x, y, ds.n_classes, folds), device)
    epochs = cfg["quick_epochs"] if quick else cfg["epochs"]
    specs = []
    for i, over in enumerate(cfg["trials"][:1] if quick else cfg["trials"]):
        p = {k: default_value(k, cfg["model"]) for k in PARAMS}
        p.update(over, epochs=epochs)
        specs.append(TrialSpec(number=i, params=p, model=cfg["model"], metric="accuracy", direction="maximize", seed=0))
    info = {"dataset": cfg["dataset"], "model": cfg["model"], "n_train": len(y), "input_shape": list(x.shape[1:]),
            "epochs": epochs, "params": [dict(t) for t in (cfg["trials"][:1] if quick else cfg["trials"])]}
    return fd, specs, info


def bench_conv(name: str, quick: bool, repeats: int, device: str) -> dict[str, Any]:
    fd, specs, info = conv_setup(name, quick, device)
    for pack in (True, False):  # warm-up: vmap's and the kernels' first calls
        train_trial(specs[0], fd, pack)
    runs: dict[str, list[list[dict[str, Any]]]] = {v: [] for v in VARIANTS}  # [repeat][trial]
    for _ in range(repeats):
        for v in VARIANTS:
            runs[v].append([train_trial(s, fd, v == "packed") for s in specs])
    with other_kernels(device) as noise_change:  # once: it only has to show how far rounding moves the values
        noise = [train_trial(s, fd, False) for s in specs]
    drop_states(noise, *runs["packed"], *runs["unpacked"])
    first = {v: runs[v][0] for v in VARIANTS}
    trials = []
    for i, _s in enumerate(specs):
        pk = [rep[i]["s"] for rep in runs["packed"]]
        up = [rep[i]["s"] for rep in runs["unpacked"]]
        p1, u1, n1 = [first["packed"][i]], [first["unpacked"][i]], [noise[i]]
        trials.append({
            "params": info["params"][i], "packed_s": C.summarize(pk), "unpacked_s": C.summarize(up),
            "packed_over_unpacked": C.summarize([a / b for a, b in zip(pk, up, strict=True)], 3),
            "packed": first["packed"][i]["packed"], "state": {v: first[v][i]["state"] for v in VARIANTS},
            "fold_values": {"packed": p1[0]["fold_values"], "unpacked": u1[0]["fold_values"],
                            "noise": n1[0]["fold_values"]},
            "fold_value_diff": max_diff(p1, u1, "fold_values"), "noise_fold_value_diff": max_diff(n1, u1, "fold_values"),
            "epoch1_loss_diff": max_diff(p1, u1, "train_losses", 1),
            "noise_epoch1_loss_diff": max_diff(n1, u1, "train_losses", 1),
            "deterministic": all(rep[i]["fold_values"] == u1[0]["fold_values"] for rep in runs["unpacked"])
            and all(rep[i]["fold_values"] == p1[0]["fold_values"] for rep in runs["packed"]),
        })
    totals = {v: [sum(t["s"] for t in rep) for rep in runs[v]] for v in VARIANTS}
    diff = max_diff(first["packed"], first["unpacked"], "fold_values")
    ndiff = max_diff(noise, first["unpacked"], "fold_values")
    ldiff = max_diff(first["packed"], first["unpacked"], "train_losses", 1)
    nldiff = max_diff(noise, first["unpacked"], "train_losses", 1)
    return {**info, "noise_change": noise_change, "trials": trials,
            "total": {"packed_s": C.summarize(totals["packed"]), "unpacked_s": C.summarize(totals["unpacked"]),
                      "packed_over_unpacked": C.summarize(
                          [a / b for a, b in zip(totals["packed"], totals["unpacked"], strict=True)], 3)},
            "fold_value_max_abs_diff": diff, "noise_fold_value_max_abs_diff": ndiff,
            "epoch1_loss_max_abs_diff": ldiff, "noise_epoch1_loss_max_abs_diff": nldiff,
            "within_noise": None if diff is None or ndiff is None else diff <= ndiff,
            "noise_s": [t["s"] for t in noise]}


def dropout_stream_check(device: str) -> dict[str, Any]:
    """Where a conv model's dropout masks come from, packed vs unpacked: one epoch of the same CNN folds
    (dropout 0.2, the quick data) after ``torch.manual_seed(1)`` and again after ``torch.manual_seed(2)``.
    Each fold's masks should come from its own generator (``hpo.models._layers.Dropout``), so the global
    seed should change nothing; True = the losses changed with it."""
    import torch

    from hpo.crossval import SequentialFolds
    from hpo.packing import PackedFolds
    from hpo.training import Learner

    fd, specs, _ = conv_setup("cnn", True, device)
    p = dict(specs[0].params, dropout=0.2, epochs=1)
    follows: dict[str, bool] = {}
    for v in VARIANTS:
        losses = []
        for global_seed in (1, 2):
            lrs = [Learner(fd.data, tr, "cnn", p, seed=k, direction="maximize", epochs=1)
                   for k, (tr, _va) in enumerate(fd.folds)]
            g = PackedFolds(lrs, 1) if v == "packed" else SequentialFolds(lrs)
            torch.manual_seed(global_seed)
            losses.append(g.train_epoch())
        follows[v] = losses[0] != losses[1]
    return {"dropout": 0.2, "losses_follow_global_seed": follows}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, once; does not write BENCHMARKS.md")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--parts", default="reference,cnn,resnet20", help="which parts to run")
    return C.run_main(ap, argv, _main)


def hpo_revision() -> str:
    """The commit measured, and whether hpo/ had uncommitted changes (another session may be editing it)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=C.ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD") or "?"
        return head + (" + uncommitted changes under hpo/" if git("status", "--porcelain", "--", "hpo") else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def _main(args) -> dict[str, Any]:
    import torch

    repeats = 1 if args.quick else args.repeats
    parts = args.parts.split(",")
    mach, vers = C.machine(), C.versions()
    t0 = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "packing", "quick": args.quick, "machine": mach, "versions": vers,
                              "device": args.device, "repeats": repeats, "torch_threads": torch.get_num_threads(),
                              "hpo_commit": hpo_revision()}
    if "reference" in parts:
        epochs, n_trials = (2, 2) if args.quick else (20, 16)
        result["reference"] = bench_reference(epochs, n_trials, repeats, args.device)
    result["conv"] = {name: bench_conv(name, args.quick, repeats, args.device) for name in CONV_TRIALS if name in parts}
    if result["conv"]:
        result["dropout_check"] = dropout_stream_check(args.device)
    result["loadavg_at_end"] = C.loadavg()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    C.emit(result)
    if not args.quick:
        C.write_section("packing", render(result, C.command()))
    return result


def _d(x: float | None) -> str:
    """A value difference: 0 exactly, else 3 significant digits."""
    if x is None:
        return "—"
    return "0" if x == 0 else f"{x:.3g}"


def _ratio_word(r: float) -> str:
    return f"{1 / r:.2f}× faster" if r < 1 else f"{r:.2f}× slower"


def render(r: dict[str, Any], cmd: str) -> str:
    m = r["machine"]
    lines = ["## 6. Fold packing: k fold models trained as one stacked model", "",
             C.env_block(m, r["versions"], cmd).rstrip()
             + f"; load average at end {r.get('loadavg_at_end')}; whole run {r['wall_s']} s",
             f"- device: {r['device']}, torch threads {r['torch_threads']}; hpo at {r.get('hpo_commit', '?')}", "",
             f"Packed = `execution.pack_folds: true` / `TrialSpec(pack=True)`; unpacked = `false`. "
             f"{r['repeats']} repeat(s) after a warm-up of each, interleaved (packed, unpacked, …); "
             "seconds are medians (min–max), ratios are packed / unpacked per repeat (< 1: packing is faster).", ""]
    ref = r.get("reference")
    if ref:
        st, tr = ref["study"], ref["training"]
        lines += [f"**(a) The reference study** of §1 (digits, MLP, 3 folds, {ref['epochs']} epochs, "
                  f"{ref['n_trials']} TPE trials, seed 0; `hpo.run` with full tracking into a fresh sqlite store), "
                  "and its training phase alone: the same parameter sets, folds and data, each trial's "
                  "`hpo.crossval.run_trial`, summed.", "",
                  C.table(["what", "packed s", "unpacked s", "packed / unpacked"],
                          [[label, C.med_range(d["packed"]), C.med_range(d["unpacked"]),
                            C.med_range(d["packed_over_unpacked"], 3)]
                           for label, d in (("whole `hpo.run`", st["wall_s"]), ("its search phase", st["search_s"]),
                                            ("its trials' `run_trial`, summed", st["trial_train_s"]),
                                            ("training phase alone (`run_trial` re-run, summed)", tr["s"]))]), "",
                  f"Values: both studies drew {'the same' if st['same_parameter_sets'] else '**different**'} "
                  f"{ref['n_trials']} parameter sets; largest |packed − unpacked| of a trial's per-fold best "
                  f"accuracy: {_d(st['fold_value_max_abs_diff'])} in the studies, "
                  f"{_d(tr['fold_value_max_abs_diff'])} in the re-run; of any best-epoch fold weight: "
                  f"{_d(tr['weights_max_abs_diff'])}; of any fold's reported mean training loss in any epoch: "
                  f"{_d(tr['train_loss_max_abs_diff'])}; best epochs "
                  f"{'all equal' if tr['best_epochs_equal'] else '**not all equal**'}; the re-run reproduces the "
                  f"studies' values to {_d(tr['rerun_vs_study_max_abs_diff'])}. Trials' `hpo.packed` tags: "
                  f"{', '.join(st['packed_tags'])} (packed study), {', '.join(st['unpacked_tags'])} (unpacked).", ""]
    conv = r.get("conv") or {}
    if conv:
        first = next(iter(conv.values()))
        lines += ["**(b) Convolutional models** under `torch.func.vmap` (3 folds, seed 0, 3 fixed parameter sets "
                  "each, `CONV_TRIALS` in `benchmarks/packing.py`), timed per trial with `run_trial`. Float-noise "
                  f"yardstick: the same unpacked trial once more with {first['noise_change']} (torch's native "
                  "kernels: the same fp32 convolutions, BatchNorm and pooling, summed in another order). "
                  "Δ = largest |difference| over the trial's folds: of the best validation accuracy, and of the "
                  "first epoch's training loss.", ""]
        rows = []
        for name, c in conv.items():
            for i, t in enumerate(c["trials"]):
                desc = ", ".join(f"{k} {v}" for k, v in t["params"].items())
                rows.append([f"{name} #{i}", desc, C.med_range(t["packed_s"]), C.med_range(t["unpacked_s"]),
                             C.med_range(t["packed_over_unpacked"], 2), t["packed"],
                             f"{_d(t['fold_value_diff'])} / {_d(t['noise_fold_value_diff'])}",
                             f"{_d(t['epoch1_loss_diff'])} / {_d(t['noise_epoch1_loss_diff'])}"])
            rows.append([f"**{name} total**", f"{c['dataset']} ({c['n_train']:,} train, "
                         f"{'×'.join(map(str, c['input_shape']))}), {c['epochs']} epoch(s)",
                         C.med_range(c["total"]["packed_s"]), C.med_range(c["total"]["unpacked_s"]),
                         f"**{C.med_range(c['total']['packed_over_unpacked'], 2)}**", "",
                         f"{_d(c['fold_value_max_abs_diff'])} / {_d(c['noise_fold_value_max_abs_diff'])}",
                         f"{_d(c['epoch1_loss_max_abs_diff'])} / {_d(c['noise_epoch1_loss_max_abs_diff'])}"])
        lines.append(C.table(["trial", "params", "packed s", "unpacked s", "packed / unpacked", "hpo.packed",
                              "Δ best acc: packed / noise", "Δ epoch-1 loss: packed / noise"], rows))
        lines.append("")
    lines += ["**Reading.** " + reading(r)]
    return "\n".join(lines)


def reading(r: dict[str, Any]) -> str:
    """One paragraph from the measured numbers: what they say, and what ``pack_folds: auto`` does with it."""
    out = []
    ref = r.get("reference")
    load = r["machine"].get("loadavg_at_start")
    if ref:
        tr, st = ref["training"], ref["study"]
        rt, rw = tr["s"]["packed_over_unpacked"]["median"], st["wall_s"]["packed_over_unpacked"]["median"]
        exact = tr["fold_value_max_abs_diff"] == 0 and tr["weights_max_abs_diff"] == 0
        loss_note = ("" if tr["train_loss_max_abs_diff"] == 0 else
                     f" (only the reported per-fold training-loss curves differ, by up to "
                     f"{_d(tr['train_loss_max_abs_diff'])}: the packed path reports a batch's loss as "
                     "`cross_entropy(reduction='none')` averaged per fold, which rounds differently from the "
                     "unpacked `CrossEntropyLoss()` mean; the gradients and weights are the same)")
        spread = "/".join(f"{st['wall_s'][v].get('spread_pct')} %" for v in VARIANTS)
        out.append(f"On this {r['device'].upper()} the MLP's packed training phase is {_ratio_word(rt)} than "
                   f"one fold after another, and the whole reference study {_ratio_word(rw)} (its bookkeeping — "
                   "MLflow, Optuna, refit, report — is the same for both and dilutes any training difference; "
                   f"the study wall times spread {spread} packed/unpacked)"
                   + ("; packed and unpacked train bit-for-bit the same weights and fold values, so the study "
                      f"draws the same trials{loss_note}." if exact else
                      f"; packed and unpacked are **not** bit-identical (Δ fold value {_d(tr['fold_value_max_abs_diff'])}, "
                      f"Δ weight {_d(tr['weights_max_abs_diff'])}), which the hand-stacked MLP path promises."))
    conv = r.get("conv") or {}
    if conv:
        parts = []
        for name, c in conv.items():
            ratio = c["total"]["packed_over_unpacked"]["median"]
            wn = c["within_noise"]
            parts.append(f"{name} packed is {_ratio_word(ratio)} (Δ best accuracy {_d(c['fold_value_max_abs_diff'])} "
                         f"vs noise {_d(c['noise_fold_value_max_abs_diff'])}: "
                         + ("within" if wn else "**beyond**" if wn is False else "not compared")
                         + " the float-noise spread of one rounding-only change)")
        out.append("With convolutions, " + "; ".join(parts) + ".")
        slower = [n for n, c in conv.items() if c["total"]["packed_over_unpacked"]["median"] > 1]
        if r["device"] == "cpu":
            out.append("That is why `pack_folds: auto` packs on the CPU only models without convolutions: "
                       + (f"{' and '.join(slower)} trained slower packed here (under vmap each convolution over the "
                          "k folds' weights runs as one grouped convolution, presumably slower on these CPU kernels "
                          "than k separate ones; what is measured here is only the end-to-end time)"
                          if slower else "here the convolutional models were not slower packed, so this run does "
                          "not by itself support auto's CPU rule")
                       + "; `pack_folds: true` packs them anyway. On CUDA auto packs every model that stacks; "
                       "whether that pays is measured by `python -m benchmarks.gpu_check` on a GPU, not here.")
        beyond = [f"{n} #{i}" for n, c in conv.items() for i, t in enumerate(c["trials"])
                  if t["fold_value_diff"] is not None and t["noise_fold_value_diff"] is not None
                  and (t["fold_value_diff"] > t["noise_fold_value_diff"]
                       or (t["epoch1_loss_diff"] or 0) > 10 * (t["noise_epoch1_loss_diff"] or 0))]
        with_dropout = [f"{n} #{i}" for n, c in conv.items() for i, t in enumerate(c["trials"])
                        if float(t["params"].get("dropout", 0)) > 0]
        dc = (r.get("dropout_check") or {}).get("losses_follow_global_seed", {})
        if beyond:
            out.append(f"Beyond the noise yardstick (a larger Δ best accuracy, or an epoch-1 loss Δ over 10× the "
                       f"yardstick's): {', '.join(beyond)}; the trial(s) with dropout: {', '.join(with_dropout) or 'none'}.")
        if dc.get("packed") and not dc.get("unpacked"):
            out.append("The dropout check explains it: one epoch of the same packed CNN folds (dropout 0.2) gives "
                       "other losses after `torch.manual_seed(1)` than after `torch.manual_seed(2)`, the unpacked "
                       "folds the same losses. Packed under vmap, dropout draws its masks from torch's global RNG, "
                       "not from each fold's own generator as unpacked (and as `hpo.models._layers.Dropout` "
                       "documents), so a packed conv trial with dropout trains on other masks than unpacked: a "
                       "difference of random draws, not of rounding (and, the global RNG being shared by "
                       "concurrent trials' threads, presumably not reproducible with max_concurrent_trials > 1; "
                       "not measured here).")
        elif dc:
            out.append(f"Dropout check (losses change with torch's global seed): packed {dc.get('packed')}, "
                       f"unpacked {dc.get('unpacked')}.")
        plain = [t for c in conv.values() for t in c["trials"] if float(t["params"].get("dropout", 0)) == 0]
        lp = max((t["epoch1_loss_diff"] or 0.0) for t in plain) if plain else None
        ln = max((t["noise_epoch1_loss_diff"] or 0.0) for t in plain) if plain else None
        out.append("Packed and unpacked conv trials start from the same weights and batches; without dropout what "
                   "separates them is rounding, which training amplifies epoch by epoch. The "
                   f"epoch-1 loss column looks before much amplification: over the trials without dropout at most "
                   f"{_d(lp)} packed vs {_d(ln)} for the rounding-only change.")
    if load and max(load) > 1.5:
        out.append(f"Caveat: the machine was shared (load average {load} at start, "
                   f"{r.get('loadavg_at_end')} at the end) while this ran; the variants are interleaved, so the "
                   "ratios hold better than the seconds.")
    return " ".join(out)


if __name__ == "__main__":
    main()
