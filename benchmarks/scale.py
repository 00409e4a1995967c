"""The service's own cost per trial over a long study of a cheap objective (issue #5).

    python -m benchmarks.scale [--quick] [--trials 1000] [--samplers tpe,random] [--storage sqlite|journal]

A study of a cheap objective (iris, MLP, 2 folds, 2 epochs) with full tracking, one trial at a
time, once with TPE and once with random sampling. Per trial:

- wall: from one ``SearchLoop._launch`` to the next (the whole ask -> train -> tell cycle);
- training: ``run_trial``'s own wall time minus the epoch sink calls inside it
  (MLflow ``log_batch`` + Optuna ``report``/``should_prune``), which are service time;
- overhead = wall - training, broken into Optuna ask, MLflow child run start, epoch sink,
  Optuna tell + MLflow end of run (``_finish``), checkpoint handling.

Also the driver's RSS after every trial and the sizes of ``mlflow.db`` and Optuna's store: ``optuna.db``
(hpo's default), or with ``--storage journal`` an Optuna journal file (``tracking.storage: …/optuna.journal``).
Everything is timed by wrapping functions from outside; nothing in hpo is edited.
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
name: scale-iris
data:
  dataset: iris
  test_size: 0.2
model: mlp
search:
  sampler: SAMPLER
  n_trials: NTRIALS
  seed: 0
cv:
  folds: 2
params:
  lr: {low: 1.0e-3, high: 1.0e-1, log: true}
  width: {low: 8, high: 64}
  depth: {low: 1, high: 2}
  dropout: {low: 0.0, high: 0.3}
  batch_size: [16, 32]
  optimizer: adam
  epochs: 2
"""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class SqliteProbe:
    """Counts SQL transactions (commits) on every SQLAlchemy engine while a study runs. (hpo's own
    sqlite stores run in WAL mode, see ``hpo/sqlite_store.py``; the rollback-journal figures in
    BENCHMARKS.md predate that.)"""

    def __init__(self) -> None:
        self.commits = 0

    def _on_commit(self, conn) -> None:
        self.commits += 1

    def __enter__(self) -> SqliteProbe:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "commit", self._on_commit)
        return self

    def __exit__(self, *exc) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "commit", self._on_commit)


def run_study(sampler: str, n_trials: int, storage: str = "sqlite") -> dict[str, Any]:
    import optuna

    import hpo
    import hpo.executors.local as local
    import hpo.loop as hl
    import hpo.tracking as ht
    from hpo.epochs import EpochSink
    from hpo.spec import parse_spec

    with tempfile.TemporaryDirectory() as tmp, C.PhaseTimer() as t, SqliteProbe() as probe:
        uri = f"sqlite:///{tmp}/mlflow.db"
        optuna_file = Path(tmp) / ("optuna.journal" if storage == "journal" else "optuna.db")
        text = SPEC.replace("SAMPLER", sampler).replace("NTRIALS", str(n_trials))
        if storage == "journal":
            text += f"tracking:\n  storage: {optuna_file}\n"
        spec = parse_spec(text)
        for owner, attr, name in ((hl.SearchLoop, "_launch", "launch"), (hl.SearchLoop, "_finish", "finish"),
                                  (local, "train", "run_trial"), (EpochSink, "epoch", "sink"),
                                  (EpochSink, "end", "sink_end"),
                                  (optuna.Study, "ask", "ask"), (optuna.Study, "tell", "tell"),
                                  (ht.Tracker, "start_trial", "start_trial"), (ht.Tracker, "end_trial", "end_trial"),
                                  (hl.SearchLoop, "_keep_checkpoint", "checkpoint")):
            t.wrap(owner, attr, name, keep_calls=True)
        samples: list[tuple[float, float, int, int]] = []  # (time, rss MB, mlflow.db bytes, optuna.db bytes)
        db_m, db_o = Path(tmp) / "mlflow.db", optuna_file
        original_finish = hl.SearchLoop._finish

        def finish_and_sample(self, *a, **k):
            out = original_finish(self, *a, **k)
            samples.append((time.perf_counter(), _rss_mb(), db_m.stat().st_size, db_o.stat().st_size))
            return out

        hl.SearchLoop._finish = finish_and_sample
        try:
            t0 = time.perf_counter()
            result = hpo.run(spec, tracking_uri=uri)
            wall = time.perf_counter() - t0
        finally:
            hl.SearchLoop._finish = original_finish
        sizes = {"mlflow.db": db_m.stat().st_size, optuna_file.name: db_o.stat().st_size,
                 "artifacts": sum(p.stat().st_size for p in (Path(tmp) / "artifacts").rglob("*") if p.is_file())}
    calls = t.calls
    launches = [s for s, _ in calls["launch"]]
    finishes = [s + d for s, d in calls["finish"]]
    n = len(launches)
    per_trial = []
    sink = sorted(calls.get("sink", []))
    for i in range(n):
        end = launches[i + 1] if i + 1 < n else finishes[i]
        wall_i = end - launches[i]
        rs, rd = calls["run_trial"][i]
        sink_i = sum(d for s, d in sink if rs <= s <= rs + rd)
        train_i = rd - sink_i
        sink_i += sum(d for s, d in calls.get("sink_end", []) if launches[i] <= s <= end)  # last curve batch
        per_trial.append({
            "wall_ms": 1000 * wall_i, "train_ms": 1000 * train_i, "overhead_ms": 1000 * (wall_i - train_i),
            "ask_ms": 1000 * calls["ask"][i][1], "start_trial_ms": 1000 * calls["start_trial"][i][1],
            "sink_ms": 1000 * sink_i, "finish_ms": 1000 * calls["finish"][i][1],
            "tell_ms": 1000 * calls["tell"][i][1], "end_trial_ms": 1000 * calls["end_trial"][i][1],
            "checkpoint_ms": 1000 * (calls["checkpoint"][i][1] if i < len(calls.get("checkpoint", [])) else 0.0),
        })
    # launch minus ask, child run start and the inline trial = the rest of _launch (suggest, TrialSpec)
    marks = sorted({m for m in (10, 100, 1000, n) if m <= n})
    at = {}
    for m in marks:
        lo = max(0, m - max(5, m // 10))  # window: the last 10% (at least 5) trials up to m
        win = per_trial[lo:m]
        at[str(m)] = {k: round(statistics.median(r[k] for r in win), 2) for k in win[0]}
        at[str(m)]["window"] = f"trials {lo + 1}-{m}"
        at[str(m)]["rss_mb"] = round(samples[m - 1][1], 1)
        at[str(m)]["mlflow_db_mb"] = round(samples[m - 1][2] / 2**20, 2)
        at[str(m)]["optuna_db_mb"] = round(samples[m - 1][3] / 2**20, 2)
    over = [r["overhead_ms"] for r in per_trial]
    worst = max(range(n), key=lambda i: over[i])
    rss = [s[1] for s in samples]
    k10 = min(n - 1, max(9, n // 10))
    return {
        "sampler": sampler, "storage": storage, "sqlite": "WAL + synchronous=NORMAL (hpo's default)",
        "sql_commits_per_trial": round(probe.commits / n, 1), "n_trials": n, "wall_s": round(wall, 2), "best_cv": result.best_value,
        "test": result.test_metrics.get("accuracy"),
        "overhead_ms_at": at, "overhead_ms_max": round(over[worst], 1), "overhead_ms_max_trial": worst + 1,
        "worst_trial": {k: round(v, 1) for k, v in per_trial[worst].items()},
        "n_trials_over_250ms": sum(o > 250 for o in over),
        "overhead_ms_p95_last_10pct": round(C.percentile(over[n - max(5, n // 10):], 95), 1),
        "rss_mb": {"after_trial_1": round(rss[0], 1), f"after_trial_{k10 + 1}": round(rss[k10], 1),
                   "final": round(rss[-1], 1),
                   "growth_per_100_trials_after_10pct": round(100 * (rss[-1] - rss[k10]) / max(1, n - 1 - k10), 2)},
        "final_sizes_mb": {k: round(v / 2**20, 2) for k, v in sizes.items()},
        "series": {"overhead_ms": [round(o, 1) for o in over], "rss_mb": [round(r, 1) for r in rss],
                   "ask_ms": [round(r["ask_ms"], 1) for r in per_trial]},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30 trials per sampler")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--samplers", default="random,tpe")
    ap.add_argument("--storage", choices=("sqlite", "journal"), default="sqlite",
                    help="Optuna's store: hpo's default optuna.db, or an Optuna journal file")
    ap.add_argument("--repeats", type=int, default=1, help="accepted for uniformity; a 1,000-trial study runs once")
    return C.run_main(ap, argv, _main)


def _main(args) -> dict[str, Any]:
    n = 30 if args.quick else args.trials
    mach, vers = C.machine(), C.versions()
    run_study("random", 3, args.storage)  # warm-up: imports and lazy paths; not measured
    studies = {}
    for s in (s for s in args.samplers.split(",") if s):
        studies[s] = run_study(s, n, args.storage)
        studies[s]["load_after"] = C.loadavg()
    targets = {}
    for s, r in studies.items():
        last = r["overhead_ms_at"][str(r["n_trials"])]
        targets[s] = {"median_overhead_at_last_le_25ms": last["overhead_ms"] <= 25,
                      "no_trial_above_250ms": r["n_trials_over_250ms"] == 0,
                      "memory_flat (< 1 MB per 100 trials)": abs(r["rss_mb"]["growth_per_100_trials_after_10pct"]) < 1.0}
    result = {"benchmark": "scale", "quick": args.quick, "command": C.command(), "machine": mach, "versions": vers, "n_trials": n,
              "studies": studies, "targets": targets}
    if not args.quick:
        C.RESULTS.mkdir(parents=True, exist_ok=True)
        suffix = "" if args.storage == "sqlite" else f"_{args.storage}"
        result["plot"] = f"benchmarks/results/scale{suffix}.png"
        plot(result, C.ROOT / result["plot"])
        C.write_section(f"scale{suffix}", render(result))
    printable = {**result, "studies": {k: {kk: vv for kk, vv in v.items() if kk != "series"}
                                       for k, v in studies.items()}}
    C.emit(printable)
    return result


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s, st in r["studies"].items():
        xs = range(1, len(st["series"]["overhead_ms"]) + 1)
        axes[0].plot(xs, st["series"]["overhead_ms"], ".", ms=2, label=f"{s}: overhead", alpha=0.6)
        axes[0].plot(xs, st["series"]["ask_ms"], "-", lw=0.8, label=f"{s}: Optuna ask")
        axes[1].plot(xs, st["series"]["rss_mb"], label=s)
    axes[0].set(xlabel="trial", ylabel="ms per trial", title="service time per trial (wall − training)",
                yscale="log")
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="trial", ylabel="driver RSS (MB)", title="driver memory")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(r: dict[str, Any]) -> str:
    journal = next(iter(r["studies"].values()))["storage"] == "journal"
    title = ("## 3b. Scale with Optuna's journal file as its storage (`tracking.storage: …/optuna.journal`)" if journal
             else "## 3. Scale: the service's own time per trial over 1,000 trials")
    lines = [title, "",
             C.env_block(r["machine"], r["versions"], r.get("command") or f"python -m benchmarks.scale --trials {r['n_trials']}"),
             f"iris (120 train), MLP (width 8–64, depth 1–2, dropout, lr log, batch [16, 32], adam), 2 folds, 2 epochs, "
             f"{r['n_trials']} trials, one at a time, full tracking into a fresh sqlite store"
             f"{' and an Optuna journal file' if journal else ''}. Overhead = wall per trial "
             "(launch to next launch) − training (run_trial minus the epoch sink calls inside it). Median over the "
             f"window before each mark (last 10% of trials, at least 5). Plot: `{r.get('plot', 'benchmarks/results/scale.png')}`.", ""]
    for s, st in r["studies"].items():
        rows = []
        for m, a in st["overhead_ms_at"].items():
            rows.append([m, a["window"], C.fmt(a["wall_ms"], 1), C.fmt(a["train_ms"], 1), f"**{a['overhead_ms']:.1f}**",
                         C.fmt(a["ask_ms"], 1), C.fmt(a["start_trial_ms"], 1), C.fmt(a["sink_ms"], 1),
                         C.fmt(a["tell_ms"], 1), C.fmt(a["end_trial_ms"], 1), C.fmt(a["checkpoint_ms"], 1),
                         C.fmt(a["rss_mb"], 0), f"{a['mlflow_db_mb']:.1f} / {a['optuna_db_mb']:.1f}"])
        tg = r["targets"][s]
        lines += [f"### `{s}` ({st['sqlite']}, {st['sql_commits_per_trial']} SQL commits per trial) — total {st['wall_s']:.0f} s, best CV {st['best_cv']:.3f}, test {st['test']:.3f}", "",
                  C.table(["trial", "window", "wall ms", "training ms", "overhead ms", "ask", "child run start",
                           "epoch sink", "tell", "end run", "checkpoint", "RSS MB", f"mlflow.db / optuna.{'journal' if journal else 'db'} MB"], rows),
                  "",
                  f"- max overhead {st['overhead_ms_max']:.0f} ms (trial {st['overhead_ms_max_trial']}; "
                  f"{st['n_trials_over_250ms']} trials above 250 ms); p95 over the last 10%: "
                  f"{st['overhead_ms_p95_last_10pct']:.0f} ms",
                  f"- RSS {st['rss_mb']}",
                  f"- final sizes (MB): {st['final_sizes_mb']}",
                  "- targets: median ≤ 25 ms at the last trial: " + ("met" if tg["median_overhead_at_last_le_25ms"] else "**not met**")
                  + "; no trial > 250 ms: " + ("met" if tg["no_trial_above_250ms"] else "**not met**")
                  + "; memory flat: " + ("met" if tg["memory_flat (< 1 MB per 100 trials)"] else "**not met**"), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
