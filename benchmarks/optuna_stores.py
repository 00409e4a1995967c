"""Optuna's own cost per trial on the storages hpo can use, without hpo around it (issue #20).

    python -m benchmarks.optuna_stores [--quick] [--trials 1000] [--repeats 3]

One trial's writes as hpo makes them (ask, 3 suggests, 7 user attributes, 2 epoch reports, tell) on
Optuna's in-memory storage, its journal file (``JournalStorage`` over ``JournalFileBackend``: hpo's
``tracking.storage: PATH.journal``) and its RDB storage on a sqlite file in WAL mode (hpo's default
``optuna.db``, opened by hpo's own ``open_storage``), each in a fresh folder; the stores take turns
in every repeat. Then the cost a reader pays: opening the filled store and reading the study's trials
back (``hpo show``, a resume, the Ray sink actor's start), median of 3 opens.
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

STORES = ("memory", "journal", "sqlite")


def _storage(kind: str, folder: Path):
    import optuna

    from hpo.search import open_storage

    if kind == "memory":
        return optuna.storages.InMemoryStorage()
    return open_storage(str(folder / "optuna.journal") if kind == "journal" else f"sqlite:///{folder / 'optuna.db'}")


def fill(kind: str, folder: Path, n: int) -> dict[str, Any]:
    """``n`` trials' writes on a fresh store of ``kind`` in ``folder``; per-trial wall and CPU, and the open cost."""
    import optuna

    storage = _storage(kind, folder)
    study = optuna.create_study(study_name="s", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        trial = study.ask()
        for name in ("lr", "width", "dropout"):
            trial.suggest_float(name, 0.0, 1.0)
        for k in range(7):
            trial.set_user_attr(f"a{k}", [0.1, 0.2])
        trial.report(0.5, 1)
        trial.report(0.6, 2)
        study.tell(trial, 0.5)
    out = {"ms_per_trial": 1000 * (time.perf_counter() - wall0) / n,
           "cpu_ms_per_trial": 1000 * (time.process_time() - cpu0) / n}
    if kind != "memory":
        opens = []
        for _ in range(3):
            t = time.perf_counter()
            got = optuna.load_study(study_name="s", storage=_storage(kind, folder)).get_trials(deepcopy=False)
            opens.append(time.perf_counter() - t)
        assert len(got) == n
        out["open_read_s"] = statistics.median(opens)
        out["file_mb"] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 2**20
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 trials, once; does not write BENCHMARKS.md")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    return C.run_main(ap, argv, _main)


def _main(args) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n, repeats = (20, 1) if args.quick else (args.trials, args.repeats)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in STORES}
    for _ in range(repeats):
        for kind in STORES:  # the stores take turns
            with tempfile.TemporaryDirectory() as tmp:
                runs[kind].append(fill(kind, Path(tmp), n))
    summary = {k: {m: round(statistics.median(r[m] for r in rs), 3) for m in rs[0]} for k, rs in runs.items()}
    result = {"benchmark": "optuna_stores", "quick": args.quick, "command": C.command(), "machine": C.machine(),
              "versions": C.versions(), "n_trials": n, "repeats": repeats, "summary": summary, "runs": runs}
    if not args.quick:
        C.write_section("optuna_stores", render(result))
    C.emit(result)
    return result


def render(r: dict[str, Any]) -> str:
    s = r["summary"]
    rows = [[k, C.fmt(v["ms_per_trial"], 1), C.fmt(v["cpu_ms_per_trial"], 1),
             f"{v['ms_per_trial'] / s['sqlite']['ms_per_trial']:.2f}",
             C.fmt(v.get("open_read_s"), 2) if "open_read_s" in v else "—",
             C.fmt(v.get("file_mb"), 1) if "file_mb" in v else "—"] for k, v in s.items()]
    return "\n".join([
        "### 3c. Optuna alone on each storage (a trial's writes as hpo makes them)", "",
        C.env_block(r["machine"], r["versions"], r.get("command") or "python -m benchmarks.optuna_stores"),
        f"{r['n_trials']} trials of ask, 3 suggests, 7 user attributes, 2 reports and tell on a fresh store, "
        f"{r['repeats']} repeats with the stores taking turns (medians); open + read = load the filled study and "
        "read its trials back (median of 3).", "",
        C.table(["store", "ms per trial", "CPU ms per trial", "/ sqlite", "open + read s", "files MB"], rows), ""])


if __name__ == "__main__":
    main()
