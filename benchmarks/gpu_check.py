"""The one prepared check for a lent GPU: fold packing's throughput on CUDA and hpo's GPU paths.

How to run it (on the GPU machine, from the repository root, with hpo and a CUDA build of torch
installed; it needs nothing downloaded)::

    python -m benchmarks.gpu_check [--out DIR]           # the full check: under 8 minutes on an H100/H200
    python -m benchmarks.gpu_check --device cpu --quick  # anywhere: only shows that the script runs

It fits a 15-minute GPU window: the check guards its own time (``--budget-s``, default 420 s;
a part that would start after the budget is skipped and says so, the Ray study runs in a
subprocess with its own timeout), which leaves the rest of the window for the machine's start
and one re-run of a single part (``--parts``). What it measures:

1. ``paths``: bf16 autocast and channels_last are on where a trial trains on CUDA: the output
   dtype of a fold ``Learner``'s forward under its autocast and of a ``PackedFolds`` forward,
   the memory format of a conv weight.
2. ``throughput``: ResNet-20 (width 16) and the CNN (width 32, depth 3) of
   ``benchmarks/gpu_throughput.py`` on CIFAR-shaped synthetic data (50,000 x 3x32x32 uint8,
   10 classes) in ``hpo.crossval.FoldData`` on the device, k = 5 stratified folds, batch 128,
   SGD momentum 0.9: one epoch of all five fold models packed (``hpo.packing.PackedFolds``)
   vs unpacked (``hpo.crossval.SequentialFolds``: what ``run_trial`` drives), in images trained
   per second over the five folds (5 x ~40,000 per epoch), against one model over one fold's
   training part in the bare loop and in hpo's ``Learner`` (``gpu_throughput.make_bare`` /
   ``make_hpo``); plus each variant's validation pass over the five folds, the epoch-1 training
   losses packed vs unpacked (same initial weights and batches; bf16 rounding differs) and peak
   GPU memory. Variants run interleaved, ``--repeats`` times (default 2), after a warm-up.
3. ``ray``: a tiny study (digits, CNN, 3 folds, 4 random trials) with ``execution.executor: ray``,
   ``gpus_per_trial: 0.5``, ``max_concurrent_trials: 2`` into a sqlite store in a temporary
   folder: every trial's child run should carry ``hpo.gpu``, two trials should overlap in time
   on the same GPU, and ``pack_folds: auto`` should pack the CNN on CUDA (``hpo.packed``).

Prints JSON, then a markdown block. On CUDA without ``--quick`` it also writes the
``gpu_check`` section of BENCHMARKS.md and ``benchmarks/results/gpu_check.json`` (and, with
``--out DIR``, both into DIR); with ``--quick`` it writes nothing. On the CPU (``--device cpu``)
the sizes shrink to seconds and the Ray study runs without GPUs (``gpus_per_trial: 0``).
"""

from __future__ import annotations

from benchmarks import _common as C  # first: with __main__, the thread settings precede numpy/torch

if __name__ == "__main__":
    C.early_threads()

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import gpu_throughput as G
from benchmarks.packing import hpo_revision

K = 5
RAY_TIMEOUT_S = 240  # the Ray study's subprocess; it takes ~1 min where Ray starts normally


def _device(req: str) -> str:
    return G._device(req)


def fold_data(n: int, device: str, seed: int = 0):
    """Synthetic CIFAR-shaped data and its K stratified folds, on ``device``."""
    from hpo.crossval import FoldData
    from hpo.folds import make_folds
    from hpo.trial import TrainingSet

    x, y = G._data(n, seed)
    folds = make_folds(y, K, 0, True, tuple(str(c) for c in range(10)))
    return FoldData.build(TrainingSet(x, y, 10, folds), device), x, y


def learners(model: str, fd, bs: int) -> list:
    """The K fold learners of one trial, seeded as ``run_trial`` seeds trial 0's."""
    from hpo.training import Learner

    p = G._params(model, bs)
    return [Learner(fd.data, tr, G.MODELS[model][0], p, seed=k, direction="maximize", epochs=1)
            for k, (tr, _va) in enumerate(fd.folds)]


def group(model: str, fd, bs: int, packed: bool):
    from hpo.crossval import SequentialFolds
    from hpo.packing import PackedFolds, trial_reason

    lrs = learners(model, fd, bs)
    if not packed:
        return SequentialFolds(lrs), None
    reason = trial_reason(lrs[0].params, lrs)
    return (None, reason) if reason else (PackedFolds(lrs, 1), None)


# --------------------------------------------------------------------------- 1. paths


def check_paths(device: str) -> dict[str, Any]:
    import torch

    fd, _x, _y = fold_data(640, device)
    lrs = learners("cnn", fd, 64)
    first = lrs[0]
    idx = first.train_idx[:8]
    forward = first.model.scaled if first.x_scaled is None else first.model.net
    xb = (fd.data.x if first.x_scaled is None else first.x_scaled)[idx]
    if first.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        if first.autocast is not None:
            with first.autocast:
                out = forward(xb)
        else:
            out = forward(xb)
    conv = next(m for m in first.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv_cl = bool(conv.weight.is_contiguous(memory_format=torch.channels_last))
    from hpo.packing import PackedFolds  # takes the learners' weights (they move to "meta")

    packed = PackedFolds(lrs, 1)
    with torch.no_grad():
        pidx = torch.stack([lr.train_idx[:8] for lr in lrs])
        pout = packed._forward(packed._inputs(pidx, slice(None), False))
    return {"autocast": None if first.autocast is None else str(first.autocast.fast_dtype),
            "learner_output_dtype": str(out.dtype), "packed_output_dtype": str(pout.dtype),
            "channels_last": bool(first.channels_last),
            "conv_weight_channels_last": conv_cl,
            "bf16_ok": (str(out.dtype) == "torch.bfloat16" and str(pout.dtype) == "torch.bfloat16")
            if device.startswith("cuda") else None}


# --------------------------------------------------------------------------- 2. throughput


def _peak(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def one_fold_variant(model: str, loop: str, fd, x, y, device: str, bs: int):
    """gpu_throughput's loop ``loop`` over fold 0's training part: (epoch function, its images)."""
    tr = fd.folds[0][0].cpu().numpy()
    return G.LOOPS[loop](model, x[tr], y[tr], device, bs), len(tr)


def measure(model: str, n: int, device: str, bs: int, repeats: int, deadline: float) -> dict[str, Any]:
    fd, x, y = fold_data(n, device)
    # warm-up on a small set: kernels, cuDNN autotuning, vmap's first trace, the allocator
    wfd, wx, wy = fold_data(min(n, 5 * 4 * bs), device, seed=1)
    for packed in (True, False):
        g, _ = group(model, wfd, bs, packed)
        if g is not None:
            g.train_epoch()
    for loop in ("bare", "hpo"):
        one_fold_variant(model, loop, wfd, wx, wy, device, bs)[0]()
    del wfd
    out: dict[str, Any] = {"images_per_epoch": {}, "runs": {v: [] for v in ("packed", "unpacked", "bare", "hpo_one")}}
    losses: dict[str, list[float]] = {}
    val_idx = [va for _tr, va in fd.folds]
    for rep in range(repeats):
        if time.perf_counter() > deadline:
            out["skipped_repeats"] = repeats - rep
            break
        for packed in (True, False):
            name = "packed" if packed else "unpacked"
            _reset_peak(device)
            g, reason = group(model, fd, bs, packed)
            if g is None:
                out["packed_reason"] = reason
                continue
            images = sum(len(lr.train_idx) for lr in g.learners)
            G._sync(device)
            t0 = time.perf_counter()
            epoch_losses = g.train_epoch()
            G._sync(device)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            g.validate(val_idx)
            G._sync(device)
            val_s = time.perf_counter() - t0
            out["images_per_epoch"][name] = images
            out["runs"][name].append({"images_per_s": images / train_s, "train_s": train_s, "val_s": val_s,
                                      "peak_mib": _peak(device)})
            if rep == 0:
                losses[name] = epoch_losses
            del g
        for loop, name in (("bare", "bare"), ("hpo", "hpo_one")):
            _reset_peak(device)
            fn, images = one_fold_variant(model, loop, fd, x, y, device, bs)
            dt = G.time_epoch(fn, device)
            out["images_per_epoch"][name] = images
            out["runs"][name].append({"images_per_s": images / dt, "train_s": dt, "peak_mib": _peak(device)})
            del fn
    summary = {v: C.summarize([r["images_per_s"] for r in rs], 0) for v, rs in out["runs"].items() if rs}
    for v in ("packed", "unpacked"):
        if out["runs"][v]:
            summary[f"{v}_val_s"] = C.summarize([r["val_s"] for r in out["runs"][v]], 3)
            summary[f"{v}_peak_mib"] = max(r["peak_mib"] or 0 for r in out["runs"][v]) or None

    def ratio(a: str, b: str) -> float | None:
        if a in summary and b in summary and summary[b]["median"]:
            return round(summary[a]["median"] / summary[b]["median"], 3)
        return None

    summary["packed_over_unpacked"] = ratio("packed", "unpacked")
    summary["unpacked_over_bare"] = ratio("unpacked", "bare")
    summary["packed_over_bare"] = ratio("packed", "bare")
    if "packed" in losses and "unpacked" in losses:
        summary["epoch1_loss_max_abs_diff"] = max(abs(a - b) for a, b in zip(losses["packed"], losses["unpacked"], strict=True))
    out["summary"] = summary
    del fd
    _reset_peak(device)
    return out


# --------------------------------------------------------------------------- 3. Ray: trials on the GPU, two per GPU

RAY_SPEC = """\
name: gpu-check-ray
data:
  dataset: digits
model: cnn
search:
  sampler: random
  n_trials: 4
  seed: 0
cv:
  folds: 3
params:
  width: [8, 16]
  depth: 2
  lr: {low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: 64
  optimizer: adam
  epochs: EPOCHS
execution:
  executor: ray
  max_concurrent_trials: 2
  cpus_per_trial: 1
  gpus_per_trial: GPUS
  device: DEVICE
  pack_folds: auto
tracking:
  report: false
"""


def ray_study(device: str, epochs: int) -> dict[str, Any]:
    """The tiny Ray study (run in a subprocess by :func:`check_ray`): where its trials ran and when."""
    from mlflow.tracking import MlflowClient

    import hpo
    from hpo.tracking.names import GPU_TAG, PACKED_TAG, ROLE_TAG, TRIAL_ROLE, TRIAL_TAG, WORKER_TAG

    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(RAY_SPEC.replace("EPOCHS", str(epochs)).replace("GPUS", "0.5" if cuda else "0")
                        .replace("DEVICE", "cuda" if cuda else "cpu"), encoding="utf-8")
        uri = f"sqlite:///{tmp}/mlflow.db"
        t0 = time.perf_counter()
        res = hpo.run(str(path), tracking_uri=uri)
        wall = time.perf_counter() - t0
        client = MlflowClient(uri)
        runs = client.search_runs([res.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}'")
        parent = client.get_run(res.parent_run_id)
        trials = sorted(({"trial": int(r.data.tags.get(TRIAL_TAG, -1)), "gpu": r.data.tags.get(GPU_TAG),
                          "worker": r.data.tags.get(WORKER_TAG), "packed": r.data.tags.get(PACKED_TAG),
                          "start_ms": r.info.start_time, "end_ms": r.info.end_time} for r in runs),
                        key=lambda t: t["trial"])
    concurrent = [(a, b) for i, a in enumerate(trials) for b in trials[i + 1:]
                  if a["end_ms"] and b["end_ms"] and max(a["start_ms"], b["start_ms"]) < min(a["end_ms"], b["end_ms"])]
    overlapping = [(a["trial"], b["trial"]) for a, b in concurrent if a["gpu"] and a["gpu"] == b["gpu"]]
    return {"wall_s": round(wall, 1), "counts": res.counts, "best_value": res.best_value,
            "test": res.test_metrics.get("accuracy"), "parent_packed": parent.data.tags.get(PACKED_TAG),
            "trials": trials, "all_tagged_gpu": bool(trials) and all(t["gpu"] for t in trials),
            "overlapping_pairs": [(a["trial"], b["trial"]) for a, b in concurrent],
            "same_gpu_overlapping_pairs": overlapping, "two_share_a_gpu": bool(overlapping) if cuda else None}


def check_ray(device: str, epochs: int, timeout: float) -> dict[str, Any]:
    """:func:`ray_study` in a fresh interpreter (its own Ray, CUDA context and timeout); its JSON back."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--ray-only", "--device", device,
           "--ray-epochs", str(epochs), "--threads", os.environ.get("OMP_NUM_THREADS", "1")]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=C.ROOT)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        return {"error": f"timed out after {timeout:.0f} s", "stderr_tail": tail.decode() if isinstance(tail, bytes) else tail}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"error": f"exit {p.returncode}", "stderr_tail": p.stderr[-2000:]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="seconds-long sizes; writes nothing")
    ap.add_argument("--repeats", type=int, default=None, help="throughput samples per variant (default 2; 1 quick)")
    ap.add_argument("--models", default="resnet20,cnn")
    ap.add_argument("--n", type=int, default=None, help="synthetic images (default 50,000 on CUDA, 200 on CPU)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--parts", default="paths,throughput,ray")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray study")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no part or repeat starts after this")
    ap.add_argument("--out", default=None, help="also write gpu_check.json and gpu_check.md into this folder")
    ap.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (set before torch loads)")
    ap.add_argument("--ray-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ray-epochs", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = _device(args.device)
    C.quiet_logs()
    if args.ray_only:
        print(json.dumps(ray_study(args.device, args.ray_epochs), default=str))
        return {}
    args.cmd = " ".join(["python -m benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    with C.pinned_threads(args.threads):
        return _main(args)


def _main(args) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    deadline = start + args.budget_s
    cuda = args.device.startswith("cuda")
    n = args.n or ((50_000 if not args.quick else 2_000) if cuda else 200)
    repeats = args.repeats or (1 if args.quick else 2)
    parts = [p for p in args.parts.split(",") if not (p == "ray" and args.no_ray)]
    r: dict[str, Any] = {"benchmark": "gpu_check", "quick": args.quick, "machine": C.machine(),
                         "versions": C.versions("ray"), "device": args.device, "n_images": n, "folds": K,
                         "batch_size": args.batch_size, "repeats": repeats, "torch_threads": torch.get_num_threads(),
                         "hpo_commit": hpo_revision()}
    if cuda:
        r["gpu"] = torch.cuda.get_device_name(0)
        r["cuda"] = torch.version.cuda
    ray_reserve = 150.0 if "ray" in parts else 0.0  # what the Ray study needs at the end

    def log(msg: str) -> None:
        print(f"[gpu_check {time.perf_counter() - start:6.1f} s] {msg}", file=sys.stderr, flush=True)

    if "paths" in parts:
        log("paths")
        try:
            r["paths"] = check_paths(args.device)
        except Exception as exc:  # one part's failure must not cost the others
            r["paths"] = {"error": f"{type(exc).__name__}: {exc}"}
    if "throughput" in parts:
        r["throughput"] = {}
        for model in args.models.split(","):
            if time.perf_counter() > deadline - ray_reserve:
                r["throughput"][model] = {"skipped": "past --budget-s"}
                continue
            log(f"throughput {model}")
            try:
                r["throughput"][model] = measure(model, n, args.device, args.batch_size, repeats, deadline - ray_reserve)
            except Exception as exc:
                r["throughput"][model] = {"error": f"{type(exc).__name__}: {exc}"}
    if "ray" in parts:
        log("ray study")
        left = max(30.0, deadline + 60 - time.perf_counter())
        r["ray"] = check_ray(args.device, 2 if args.quick else 5, min(RAY_TIMEOUT_S, left))
    r["wall_s"] = round(time.perf_counter() - start, 1)
    C.emit(r)
    md = render(r, args.cmd)
    print(md)
    if cuda and not args.quick:
        C.write_section("gpu_check", md)
        C.RESULTS.mkdir(parents=True, exist_ok=True)
        (C.RESULTS / "gpu_check.json").write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
    if args.out and not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(r, indent=2, default=str), encoding="utf-8")
        (out / "gpu_check.md").write_text(md + "\n", encoding="utf-8")
    return r


def _g(x: float | None) -> str:
    return "—" if x is None else "0" if x == 0 else f"{x:.3g}"


def _ips(s: dict[str, Any], key: str) -> str:
    return C.med_range(s[key], 0) if key in s else "—"


def render(r: dict[str, Any], cmd: str) -> str:
    dev = r["device"] + (f" ({r['gpu']}, CUDA {r.get('cuda')})" if "gpu" in r else "")
    lines = [f"## 7. GPU check: fold packing on {dev}", "", C.env_block(r["machine"], r["versions"], cmd).rstrip()
             + f"; whole check {r['wall_s']} s; hpo at {r.get('hpo_commit', '?')}", ""]
    p = r.get("paths")
    if p:
        if "error" in p:
            lines += [f"Paths: **error** {p['error']}", ""]
        else:
            lines += [f"Paths: autocast {p['autocast'] or 'off'}; a fold Learner's forward gives "
                      f"{p['learner_output_dtype']}, a PackedFolds forward {p['packed_output_dtype']}; "
                      f"channels_last {p['channels_last']} (conv weight channels_last: "
                      f"{p['conv_weight_channels_last']}).", ""]
    tp = r.get("throughput")
    if tp:
        lines += [f"Throughput: synthetic CIFAR-shaped data ({r['n_images']:,} × 3×32×32 uint8, 10 classes) in "
                  f"`FoldData` on the device, k = {r['folds']} folds, batch {r['batch_size']}, SGD momentum 0.9. "
                  "Packed / unpacked: one epoch of all five fold models (`PackedFolds` / `SequentialFolds`), "
                  "images/s over the five folds; bare / hpo one Learner: one model over fold 0's training part "
                  f"(`benchmarks/gpu_throughput.py`). {r['repeats']} sample(s) each, interleaved, after a warm-up; "
                  "median (min–max).", ""]
        rows = []
        for model, t in tp.items():
            if "summary" not in t:
                rows.append([model, t.get("error") or t.get("skipped", "?"), "", "", "", "", "", "", "", ""])
                continue
            s = t["summary"]
            rows.append([model, _ips(s, "packed"), _ips(s, "unpacked"), C.fmt(s.get("packed_over_unpacked"), 2),
                         _ips(s, "hpo_one"), _ips(s, "bare"), C.fmt(s.get("packed_over_bare"), 2),
                         f"{C.med_range(s.get('packed_val_s', {}), 2)} / {C.med_range(s.get('unpacked_val_s', {}), 2)}",
                         f"{C.fmt(s.get('packed_peak_mib'), 0)} / {C.fmt(s.get('unpacked_peak_mib'), 0)}",
                         _g(s.get("epoch1_loss_max_abs_diff")) + (f" (not packed: {t['packed_reason']})"
                                                                  if t.get("packed_reason") else "")])
        lines += [C.table(["model", "hpo packed img/s", "hpo unpacked img/s", "packed / unpacked",
                           "hpo one Learner img/s", "bare img/s", "packed / bare", "val s packed / unpacked",
                           "peak MiB packed / unpacked", "Δ epoch-1 loss"], rows), ""]
    ray = r.get("ray")
    if ray:
        if "error" in ray:
            lines += [f"Ray study: **{ray['error']}**", "", "```", ray.get("stderr_tail", "")[-1500:], "```"]
        else:
            gpus = sorted({t["gpu"] for t in ray["trials"] if t["gpu"]})
            lines += [f"Ray study (digits, CNN, 3 folds, 4 random trials, `executor: ray`, `gpus_per_trial: "
                      f"{'0.5' if r['device'].startswith('cuda') else '0'}`, 2 concurrent): "
                      f"{', '.join(f'{v} {k}' for k, v in ray['counts'].items())} in "
                      f"{ray['wall_s']} s; every child run tagged `hpo.gpu`: {ray['all_tagged_gpu']} "
                      f"({', '.join(gpus) or 'none'}); trials overlapping in time: {ray.get('overlapping_pairs') or 'none'}, "
                      "of them on the same GPU: "
                      f"{ray['same_gpu_overlapping_pairs'] or 'none'} (two share a GPU: {ray['two_share_a_gpu']}); "
                      f"`hpo.packed` on the parent: {ray['parent_packed']}, on the trials: "
                      f"{', '.join(sorted({t['packed'] or '(no tag)' for t in ray['trials']}))}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
