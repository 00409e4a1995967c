"""The whole command as a user feels it: ``hpo run`` against the Optuna scripts it replaces (issue #20).

    python -m benchmarks.whole_process [--quick] [--repeats 3]

Every contender is a fresh Python process, timed from just before it is started until it has
exited (interpreter start, imports, data, the search, the final model, and whatever it writes),
on the same study: a 16-point grid over the digits MLP (lr [1e-3, 1e-2] x batch_size [64, 128] x
width [64, 128] x depth [1, 2]; adam, no dropout), 3 stratified folds, 20 epochs, 2 trials at a
time, the same train/test split (``train_test_split(test_size=0.2, stratify=y, random_state=0)``).
A grid makes every contender train the same 16 configurations.

- ``hpo``: ``hpo run spec.yaml`` (the console script), full tracking into ``./mlruns`` (sqlite),
  per-epoch curves, top-1 checkpoint, refit of the best, registered model, report; fold packing
  as ``pack_folds: auto`` chooses (the MLP is packed).
- ``hpo_unpacked``: the same with ``execution.pack_folds: false``.
- ``optuna``: the plain script a user writes (``OPTUNA`` below): ``GridSampler``,
  ``study.optimize(n_jobs=2)``, ``StratifiedKFold``, a ``DataLoader`` loop, the fold's validation
  accuracy after its last epoch, then the best configuration refit on all training data and
  tested once. No tracking.
- ``optuna_mlflow``: the same script with Optuna's ``MLflowCallback`` (``optuna_integration``), as
  Optuna's docs show, logging each trial as a run into a sqlite store.

All run with ``OMP_NUM_THREADS=1`` (two trials on two cores). Contenders are interleaved in each
repeat after one unmeasured warm-up of each; medians (min-max) and ratios of medians. Also
recorded: the time from the start of the process to the end of its first trial's first epoch
(hpo: the first curve point's MLflow timestamp; the scripts print theirs).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as C

GRID = {"lr": [1e-3, 1e-2], "batch_size": [64, 128], "width": [64, 128], "depth": [1, 2]}
QUICK_GRID = {"lr": [1e-3, 1e-2], "batch_size": [128], "width": [64], "depth": [1]}
CONCURRENCY, FOLDS = 2, 3

SPEC = """\
name: whole-process
data: {{dataset: digits, test_size: 0.2}}
model: mlp
search: {{sampler: grid, seed: 0, metric: accuracy}}
cv: {{folds: {folds}}}
params:
  lr: {lr}
  batch_size: {batch_size}
  width: {width}
  depth: {depth}
  dropout: 0.0
  optimizer: adam
  epochs: {epochs}
execution: {{max_concurrent_trials: {conc}, pack_folds: {pack}}}
"""

# The script a user writes without hpo. Optuna's GridSampler over the same grid, scikit-learn's folds,
# the usual DataLoader loop; FIRST_EPOCH and RESULT lines are read by the benchmark.
OPTUNA = '''\
import json, sys, time

import numpy as np
import optuna
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

GRID = json.loads(sys.argv[1])
EPOCHS, FOLDS, N_JOBS, TRACK = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "mlflow"
first_epoch = []

x, y = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x.astype(np.float32), y, test_size=0.2, stratify=y,
                                                    random_state=0)


def fit(cfg, xtr, ytr, seed):
    scaler = StandardScaler().fit(xtr)
    torch.manual_seed(seed)
    layers, d = [], xtr.shape[1]
    for _ in range(cfg["depth"]):
        layers += [nn.Linear(d, cfg["width"]), nn.ReLU()]
        d = cfg["width"]
    model = nn.Sequential(*layers, nn.Linear(d, 10))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    loss_fn = nn.CrossEntropyLoss()
    data = TensorDataset(torch.tensor(scaler.transform(xtr), dtype=torch.float32), torch.tensor(ytr))
    loader = DataLoader(data, batch_size=cfg["batch_size"], shuffle=True)
    for _ in range(EPOCHS):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
        if not first_epoch:
            first_epoch.append(time.time())
    return model.eval(), scaler


def accuracy(model, scaler, xs, ys):
    with torch.no_grad():
        pred = model(torch.tensor(scaler.transform(xs), dtype=torch.float32)).argmax(1).numpy()
    return float((pred == ys).mean())


def objective(trial):
    cfg = {k: trial.suggest_categorical(k, v) for k, v in GRID.items()}
    scores = []
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(x_train, y_train)
    for k, (tr, va) in enumerate(folds):
        model, scaler = fit(cfg, x_train[tr], y_train[tr], seed=k)
        scores.append(accuracy(model, scaler, x_train[va], y_train[va]))
    return float(np.mean(scores))


callbacks = []
if TRACK:
    from optuna_integration.mlflow import MLflowCallback

    callbacks.append(MLflowCallback(tracking_uri="sqlite:///mlflow.db", metric_name="cv_accuracy"))
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GridSampler(GRID, seed=0))
study.optimize(objective, n_trials=int(np.prod([len(v) for v in GRID.values()])), n_jobs=N_JOBS,
               callbacks=callbacks)
model, scaler = fit(study.best_params, x_train, y_train, seed=0)
test = accuracy(model, scaler, x_test, y_test)
print("RESULT " + json.dumps({"best_cv": study.best_value, "test": test, "first_epoch": first_epoch[0],
                              "n_trials": len(study.trials)}))
'''


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "NO_COLOR": "1", "COLUMNS": "160", "PYTHONWARNINGS": "ignore"}
    env.pop("HPO_DEBUG", None)
    return env


def _hpo_command() -> list[str]:
    """The ``hpo`` console script beside this interpreter (what a user types), else ``python -m hpo``."""
    script = Path(sys.executable).parent / "hpo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hpo"]


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """(start wall clock, seconds to exit, stdout) of one process; raises with its output if it fails."""
    start = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return start, wall, proc.stdout


def _write_spec(cwd: Path, grid: dict[str, list], epochs: int, pack: str) -> None:
    (cwd / "spec.yaml").write_text(SPEC.format(folds=FOLDS, epochs=epochs, conc=CONCURRENCY, pack=pack,
                                               **{k: json.dumps(v) for k, v in grid.items()}))


def run_hpo(grid: dict[str, list], epochs: int, pack: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        _write_spec(cwd, grid, epochs, pack)
        start, wall, _ = _timed([*_hpo_command(), "run", "spec.yaml"], cwd)
        return {"wall_s": wall, **_hpo_outcome(cwd, start)}


def _hpo_outcome(cwd: Path, start: float) -> dict[str, Any]:
    """best CV (Optuna's storage), test accuracy and the first curve point's time (MLflow's store) of a finished run."""
    with sqlite3.connect(cwd / "mlruns" / "optuna.db") as con:
        (best,) = con.execute("SELECT MAX(value) FROM trial_values").fetchone()
        (n,) = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()
    with sqlite3.connect(cwd / "mlruns" / "mlflow.db") as con:
        (test,) = con.execute("SELECT value FROM latest_metrics WHERE key = 'test_accuracy'").fetchone()
        (first,) = con.execute("SELECT MIN(timestamp) FROM metrics WHERE step = 1").fetchone()
    return {"best_cv": best, "test": test, "first_epoch_s": first / 1000 - start, "n_trials": n}


def run_script(grid: dict[str, list], epochs: int, track: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "study.py").write_text(OPTUNA)
        start, wall, out = _timed([sys.executable, "study.py", json.dumps(grid), str(epochs), str(FOLDS),
                                   str(CONCURRENCY), track], cwd)
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        r = json.loads(line[len("RESULT "):])
        if track == "mlflow":  # the callback's runs are there: one per trial
            with sqlite3.connect(cwd / "mlflow.db") as con:
                (runs,) = con.execute("SELECT COUNT(*) FROM runs").fetchone()
            assert runs == r["n_trials"], (runs, r)
        return {"wall_s": wall, "best_cv": r["best_cv"], "test": r["test"], "first_epoch_s": r["first_epoch"] - start,
                "n_trials": r["n_trials"]}


# ``hpo run`` up to its first epoch, then out: what the start-up imports (``-X importtime``) before any training
FIRST_EPOCH = """\
import os, sys, time
import hpo.epochs

def first(*args, **kwargs):
    print("FIRST_EPOCH", time.time(), file=sys.stderr, flush=True)
    os._exit(0)

hpo.epochs.EpochSink.epoch = first
from hpo.cli import main
main(["run", "spec.yaml"])
"""


def startup_imports(grid: dict[str, list], epochs: int) -> dict[str, Any]:
    """Seconds from process start to ``hpo run``'s first epoch, and the self time of each top-level package
    imported before it (``python -X importtime``, which adds its own overhead to the total)."""
    import re

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        _write_spec(cwd, grid, epochs, "auto")
        start = time.time()
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", FIRST_EPOCH], cwd=cwd, env=_env(),
                              capture_output=True, text=True, timeout=600)
    first = next(float(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith("FIRST_EPOCH"))
    by_package: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            top = m.group(2).split(".")[0]
            by_package[top] = by_package.get(top, 0.0) + int(m.group(1)) / 1e6
    ranked = dict(sorted(((k, round(v, 3)) for k, v in by_package.items()), key=lambda kv: -kv[1])[:12])
    return {"first_epoch_s": round(first - start, 2), "imports_s": round(sum(by_package.values()), 2),
            "by_package_s": ranked}


def has_mlflow_callback() -> bool:
    import importlib.util

    return importlib.util.find_spec("optuna_integration") is not None


def contenders(grid: dict[str, list], epochs: int, quick: bool = False) -> dict[str, Any]:
    """The contenders by name; ``quick`` keeps one of each kind (hpo, and the script with its callback)."""
    out = {"hpo": lambda: run_hpo(grid, epochs, "auto")}
    if not quick:
        out["hpo_unpacked"] = lambda: run_hpo(grid, epochs, "false")
    if not quick or not has_mlflow_callback():
        out["optuna"] = lambda: run_script(grid, epochs, "none")
    if has_mlflow_callback():
        out["optuna_mlflow"] = lambda: run_script(grid, epochs, "mlflow")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 2-point grid, 2 epochs, once, no warm-up")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    grid, epochs = (QUICK_GRID, 2) if args.quick else (GRID, 20)
    repeats = 1 if args.quick else args.repeats
    mach, vers = C.machine(), C.versions()
    runs_of = contenders(grid, epochs, args.quick)
    if not args.quick:  # warm-up: page cache, .pyc files, first-run paths; not measured
        for run in contenders(QUICK_GRID, 2).values():
            run()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in runs_of}
    for _ in range(repeats):
        for name, run in runs_of.items():
            r = run()
            r["load"] = C.loadavg()
            runs[name].append(r)
    base = C.summarize([r["wall_s"] for r in runs.get("optuna") or runs["optuna_mlflow"]])["median"]
    summary = {name: {"wall_s": C.summarize([r["wall_s"] for r in rs]),
                      "ratio_vs_optuna": round(C.summarize([r["wall_s"] for r in rs])["median"] / base, 3),
                      "first_epoch_s": C.summarize([r["first_epoch_s"] for r in rs]),
                      "best_cv": C.summarize([r["best_cv"] for r in rs], 4),
                      "test": C.summarize([r["test"] for r in rs], 4),
                      "n_trials": rs[0]["n_trials"]}
               for name, rs in runs.items()}
    result = {"benchmark": "whole_process", "quick": args.quick, "machine": mach,
              "versions": C.versions("optuna_integration") if has_mlflow_callback() else vers,
              "epochs": epochs, "grid": grid, "repeats": repeats, "summary": summary, "runs": runs,
              "startup": None if args.quick else startup_imports(grid, epochs)}
    C.emit(result)
    if not args.quick:
        C.RESULTS.mkdir(exist_ok=True)
        (C.RESULTS / "whole_process.json").write_text(json.dumps(result, indent=2, default=str))
        C.write_section("whole_process", render(result))
    return result


def render(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = ["## 7. The whole process: `hpo run` vs the Optuna scripts it replaces", "",
             C.env_block(r["machine"], r["versions"], f"python -m benchmarks.whole_process --repeats {r['repeats']}"),
             "A 16-point grid (lr × batch_size × width × depth) over the digits MLP, 3 folds, "
             f"{r['epochs']} epochs, 2 trials at a time, `OMP_NUM_THREADS=1`; each contender a fresh process timed "
             "from its start to its exit (see `benchmarks/whole_process.py` for what each does). "
             f"{r['repeats']} repeats, interleaved after a warm-up; median (min–max).", "",
             C.table(["contender", "wall s", "× optuna script", "start → first epoch s", "best CV", "test accuracy"],
                     [[f"`{name}`", C.med_range(v["wall_s"]), f"{v['ratio_vs_optuna']:.2f}",
                       C.med_range(v["first_epoch_s"]), C.med_range(v["best_cv"], 4), C.med_range(v["test"], 4)]
                      for name, v in s.items()])]
    if r.get("startup"):
        st = r["startup"]
        lines += ["", f"Start-up: `hpo run` reached its first epoch {st['first_epoch_s']} s after its process started "
                  f"(under `python -X importtime`, which slows imports); {st['imports_s']} s of that were imports. "
                  "Self time by top-level package, seconds:", "",
                  C.table(list(st["by_package_s"]), [list(st["by_package_s"].values())])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
