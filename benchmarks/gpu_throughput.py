"""Training throughput (images/s) of hpo's loop vs a bare loop vs a naive DataLoader loop.

    python -m benchmarks.gpu_throughput [--device auto|cpu|cuda] [--quick] [--repeats 3]
                                        [--models resnet20,cnn] [--n N] [--batch-size 128]
    python -m benchmarks.gpu_throughput --concurrent 1,2,4 [--device cuda] [--models resnet20]

Self-contained: synthetic CIFAR-shaped data (uint8 3x32x32, 10 classes; 50,000 images on CUDA,
2,000 on CPU by default; ``--quick``: 2,000 on CUDA, 256 on CPU), one timed epoch per loop after a
short warm-up, repeated ``--repeats`` times with the loops interleaved:

(a) ``hpo``: hpo's own loop, ``hpo.training.Learner.train_epoch`` on ``hpo.training.Data``
    (data on the device as uint8, per-batch standardisation inside the model, bf16 autocast and
    channels_last on CUDA, exactly what a trial runs);
(b) ``bare``: a bare PyTorch loop with the (pre-standardised float) data on the device, index
    gathers, + bf16 autocast + channels_last on CUDA;
(c) ``dataloader``: the naive loop: ``torch.utils.data.DataLoader(TensorDataset)`` over CPU
    float tensors (shuffle, default workers), each batch copied to the device, fp32.

``--concurrent 1,2,4`` runs that many training processes at once (each hpo's loop on the same
device, started together), and reports aggregate images/s. Prints JSON; on CPU (no ``--quick``)
it writes its section of BENCHMARKS.md, on CUDA into the section ``gpu_throughput_cuda``.
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
import time
from typing import Any

MODELS = {"resnet20": ("resnet", {"depth": 20, "width": 16}), "cnn": ("cnn", {"depth": 3, "width": 32})}


def _device(req: str) -> str:
    import torch

    if req == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return req


def _params(model: str, batch_size: int) -> dict[str, Any]:
    from hpo.params import PARAMS, default_value

    name, over = MODELS[model]
    p = {k: default_value(k, name) for k in PARAMS}
    p.update(over, batch_size=batch_size, optimizer="sgd", lr=0.05, momentum=0.9)
    return p


def _data(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.int64)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_hpo(model: str, x, y, device: str, bs: int):
    import torch

    from hpo.training import Data, Learner

    data = Data.from_arrays(x, y, 10, device)
    learner = Learner(data, torch.arange(len(x), device=data.device), MODELS[model][0], _params(model, bs),
                      seed=0, direction="maximize", epochs=1)
    return learner.train_epoch


def make_bare(model: str, x, y, device: str, bs: int):
    import torch

    from hpo.models import build_model

    cuda = device.startswith("cuda")
    xf = torch.as_tensor(x).to(device).float()
    xf = (xf - xf.mean(dim=(0, 2, 3), keepdim=True)) / xf.std(dim=(0, 2, 3), keepdim=True)
    yt = torch.as_tensor(y).to(device)
    torch.manual_seed(0)
    net = build_model(MODELS[model][0], input_shape=(3, 32, 32), n_outputs=10, params=_params(model, bs)).to(device)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
        xf = xf.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch() -> float:
        net.train()
        perm = torch.randperm(len(yt), device=device)
        for s in range(0, len(perm), bs):
            idx = perm[s:s + bs]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(net(xf[idx]).float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return float(loss.detach())

    return epoch


def make_dataloader(model: str, x, y, device: str, bs: int):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from hpo.models import build_model

    xf = torch.as_tensor(x).float()
    xf = (xf - xf.mean(dim=(0, 2, 3), keepdim=True)) / xf.std(dim=(0, 2, 3), keepdim=True)
    loader = DataLoader(TensorDataset(xf, torch.as_tensor(y)), batch_size=bs, shuffle=True)
    torch.manual_seed(0)
    net = build_model(MODELS[model][0], input_shape=(3, 32, 32), n_outputs=10, params=_params(model, bs)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch() -> float:
        net.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss.detach())

    return epoch


LOOPS = {"hpo": make_hpo, "bare": make_bare, "dataloader": make_dataloader}


def time_epoch(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def single(models: list[str], n: int, device: str, bs: int, repeats: int, loops: list[str]) -> dict[str, Any]:
    x, y = _data(n)
    xw, yw = x[: min(n, 4 * bs)], y[: min(n, 4 * bs)]
    out: dict[str, Any] = {}
    for model in models:
        epochs, warm = {}, {}
        for loop in loops:
            epochs[loop] = LOOPS[loop](model, x, y, device, bs)
            LOOPS[loop](model, xw, yw, device, bs)()  # warm-up: kernels, allocator, autotuning
            warm[loop] = time_epoch(epochs[loop], device) if device.startswith("cuda") else None
        times: dict[str, list[float]] = {loop: [] for loop in loops}
        for _ in range(repeats):
            for loop in loops:
                times[loop].append(time_epoch(epochs[loop], device))
        ips = {loop: [n / t for t in ts] for loop, ts in times.items()}
        res = {loop: C.summarize(v, 0) for loop, v in ips.items()}
        if "hpo" in res and "bare" in res:
            res["hpo_over_bare"] = round(res["hpo"]["median"] / res["bare"]["median"], 3)
        if "hpo" in res and "dataloader" in res:
            res["hpo_over_dataloader"] = round(res["hpo"]["median"] / res["dataloader"]["median"], 3)
        out[model] = res
    return out


def worker(args) -> None:
    """One process of --concurrent: set up, say ready, wait for 'go', train, report."""
    x, y = _data(args.n, seed=os.getpid() % 1000)
    fn = LOOPS[args.loop](args.models.split(",")[0], x, y, args.device, args.batch_size)
    LOOPS[args.loop](args.models.split(",")[0], x[:2 * args.batch_size], y[:2 * args.batch_size], args.device,
                     args.batch_size)()
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.time()
    dt = time_epoch(fn, args.device)
    print(json.dumps({"start": t0, "end": t0 + dt, "images": args.n, "s": dt}), flush=True)


def concurrent(k: int, model: str, n: int, device: str, bs: int, loop: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.gpu_throughput", "--worker", "--models", model, "--n", str(n),
           "--device", device, "--batch-size", str(bs), "--loop", loop,
           "--threads", os.environ.get("OMP_NUM_THREADS", "0")]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=C.ROOT)
             for _ in range(k)]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker failed to start: {line!r}")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    span = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    total = sum(r["images"] for r in reports)
    return {"processes": k, "aggregate_images_per_s": round(total / span, 1),
            "per_process_images_per_s": [round(r["images"] / r["s"], 1) for r in reports]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default="resnet20,cnn")
    ap.add_argument("--loops", default="hpo,bare,dataloader")
    ap.add_argument("--loop", default="hpo", help="the loop each --concurrent process runs")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--concurrent", default=None, help="e.g. 1,2,4: processes training at once")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/OpenMP threads per process (set before torch loads; 0 = library default)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = _device(args.device)
    cuda = args.device.startswith("cuda")
    if args.n is None:
        args.n = (2000 if cuda else 256) if args.quick else (50_000 if cuda else 2000)
    if args.worker:
        worker(args)
        return {}
    import torch

    mach, vers = C.machine(), C.versions()
    result: dict[str, Any] = {"benchmark": "gpu_throughput", "quick": args.quick, "machine": mach, "versions": vers,
                              "device": args.device, "n_images": args.n, "batch_size": args.batch_size,
                              "torch_threads": torch.get_num_threads()}
    if cuda:
        result["gpu"] = torch.cuda.get_device_name(0)
    repeats = 1 if args.quick else args.repeats
    models = args.models.split(",")
    if args.concurrent:
        result["concurrent"] = {m: [concurrent(int(k), m, args.n, args.device, args.batch_size, args.loop)
                                    for k in args.concurrent.split(",")] for m in models}
        result["loop"] = args.loop
    else:
        result["repeats"] = repeats
        result["images_per_s"] = single(models, args.n, args.device, args.batch_size, repeats, args.loops.split(","))
    C.emit(result)
    if not args.quick:
        name = "gpu_throughput_cuda" if cuda else "gpu_throughput"
        if args.concurrent:
            name += "_concurrent"
        C.write_section(name, render(result, " ".join(["python -m benchmarks.gpu_throughput", *(argv or sys.argv[1:])])))
    return result


def render(r: dict[str, Any], cmd: str) -> str:
    dev = r["device"] + (f" ({r['gpu']})" if "gpu" in r else "")
    title = "## 5. Training throughput" + (" — concurrent processes" if "concurrent" in r else "") + f", {dev}"
    lines = [title, "", C.env_block(r["machine"], r["versions"], cmd),
             f"Synthetic CIFAR-shaped data (3×32×32 uint8, 10 classes), {r['n_images']:,} images, batch "
             f"{r['batch_size']}, SGD momentum 0.9; torch threads {r['torch_threads']}. ResNet-20 = width 16 (0.27 M "
             "params); CNN = width 32, depth 3."]
    if "images_per_s" in r:
        lines += [f"One epoch timed per sample after a warm-up, {r['repeats']} samples interleaved; images/s, "
                  "median (min–max).", ""]
        rows = []
        for m, v in r["images_per_s"].items():
            rows.append([m, *[C.med_range(v[k], 0) if k in v else "—" for k in ("hpo", "bare", "dataloader")],
                         C.fmt(v.get("hpo_over_bare"), 2), C.fmt(v.get("hpo_over_dataloader"), 2)])
        lines.append(C.table(["model", "hpo (Learner.train_epoch)", "bare (data on device)", "naive DataLoader",
                              "hpo / bare", "hpo / DataLoader"], rows))
    else:
        lines += [f"Each process runs `{r['loop']}`'s loop for one epoch; all start together.", ""]
        rows = []
        for m, ks in r["concurrent"].items():
            for k in ks:
                rows.append([m, str(k["processes"]), C.fmt(k["aggregate_images_per_s"], 0),
                             ", ".join(f"{v:.0f}" for v in k["per_process_images_per_s"])])
        lines.append(C.table(["model", "processes", "aggregate images/s", "per process images/s"], rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
