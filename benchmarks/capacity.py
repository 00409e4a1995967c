"""How many concurrent trials the service path sustains, and what gives out first (issue #20, part 4).

    python -m benchmarks.capacity [--quick] [--concurrency 8,32,128] [--executor local|ray] [--epoch-s 0.25] [--bookkeeping N]

Trials that do no training: a user objective (``OBJECTIVE`` below) whose every epoch sleeps
``--epoch-s`` seconds, reports a synthetic metric through ``ctx.report`` and goes on, for
``--epochs`` epochs on each of 2 folds. Everything around it is hpo's real service path: Optuna's
ask/tell on its storage, an MLflow child run per trial with params, curves, end metrics and
status, the epoch sink (Optuna ``report``, batched curves), checkpoints, the refit at the end.
``--executor local`` runs the trials as threads of the driver (``max_concurrent_trials`` = the
concurrency); ``--executor ray`` on a local Ray with that many worker actors of
``cpus_per_trial = 2 / concurrency`` each (the sink is Ray's one actor, as on a cluster).

Per concurrency: trials finished per second, epoch reports per second through the sink, p50/p99
latency of ``ctx.report`` as the trial sees it (less the other fold's sleeping turn: a user objective's
folds take turns), of the sink's ``epoch`` (local executor: in the driver), and of the driver's ask (+ child run) and tell
(+ end of run), the CPU each process used over the search (the driver, and on Ray the sink
actor), and the efficiency: the sleeping time the trials asked for over what the slots had
(1.0 = the service path added nothing; it drops where a component saturates).
"""

from __future__ import annotations

from benchmarks import _common as C  # first: with __main__, the thread settings precede numpy/torch

if __name__ == "__main__":
    C.early_threads()

import argparse
import contextlib
import json
import os
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FOLDS = 2

OBJECTIVE = '''\
"""A trial that does no training: each epoch sleeps, then reports a synthetic accuracy."""
import json, math, os, threading, time

import hpo

_lock = threading.Lock()


def fit_fold(params, fold, ctx):
    import torch

    model = torch.nn.Linear(4, 3)  # what a fold keeps: a tiny model, saved at its best epoch
    best, waits = 0.0, []
    for epoch in range(1, params["epochs"] + 1):
        time.sleep(params["epoch_s"])
        if ctx.refit:
            continue
        acc = 1.0 - 0.5 * math.exp(-epoch * params["rate"])
        if acc > best:
            best = acc
            ctx.save(model)
        t0 = time.perf_counter()
        verdict = ctx.report(epoch, {"val_accuracy": acc})
        # the folds take turns (hpo.lockstep.Lockstep): the answer comes back after the other folds' turns,
        # which sleep; what is left is the service path's time for the round
        # (after the last epoch no turn follows: not counted)
        if epoch < params["epochs"]:
            waits.append(time.perf_counter() - t0 - (params["folds"] - 1) * params["epoch_s"])
        if verdict is not hpo.GO:
            break
    if ctx.refit:
        ctx.save(model)
    with _lock, open(os.path.join(os.environ["CAPACITY_OUT"], f"reports-{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(waits) + "\\n")
    return {"val_accuracy": best}
'''

SPEC = """\
name: capacity-c{conc}
data: {{dataset: iris}}
objective: {{function: synthetic:fit_fold, metric: val_accuracy}}
search: {{sampler: random, n_trials: {n_trials}, seed: 0}}
cv: {{folds: {folds}}}
params:
  rate: {{low: 0.1, high: 2.0, log: true}}
  epochs: {epochs}
  epoch_s: {epoch_s}
  folds: {folds}
tracking: {{report: false, log_max_kb: 0{tracking}}}
execution: {{executor: {executor}, max_concurrent_trials: {conc}, cpus_per_trial: {cpus}, max_retries: 0}}
"""


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _ray_cpu(into: dict[str, float]) -> None:
    """CPU seconds so far of the sink actor and of all trial workers (Ray names its processes ``ray::Class...``)."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        title = " ".join(proc.info["cmdline"] or [])
        for name, key in (("EpochSinkActor", "sink_cpu_s"), ("TrialWorker", "workers_cpu_s")):
            if title.startswith(f"ray::{name}") and proc.info["cpu_times"] is not None:
                into[key] = into.get(key, 0.0) + proc.info["cpu_times"].user + proc.info["cpu_times"].system


@contextlib.contextmanager
def stores(kind: str, workdir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The spec's extra ``tracking:`` keys for ``kind``, and what to read: ``storage`` (Optuna's URL), and for a
    server ``server_port`` (whose process group's CPU is measured) and ``postgres``:

    ``sqlite`` (hpo's embedded default, both stores in ``./mlruns``), ``server`` (``mlflow server`` on sqlite,
    Optuna on sqlite beside it), ``postgres`` (``mlflow server`` on PostgreSQL, Optuna on the same cluster),
    ``journal`` (``mlflow server`` on PostgreSQL, Optuna on a journal file: ``tracking.storage: …/optuna.journal``)."""
    beside = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"  # hpo's default, in the folder the study runs in
    if kind == "sqlite":
        yield "", {"storage": beside}
        return
    from hpo.sqlite_store import seed_mlflow_db
    from tests._services import create_database, mlflow_server, postgres_server, sqlalchemy_uri

    with contextlib.ExitStack() as stack:
        if kind == "server":
            backend = f"sqlite:///{workdir / 'server.db'}"
            seed_mlflow_db(backend)
            storage = beside
        else:
            dsn = stack.enter_context(postgres_server(workdir))
            backend = dsn
            storage = (str(workdir / "optuna.journal") if kind == "journal"
                       else sqlalchemy_uri(create_database(dsn, "optuna")))
        url = stack.enter_context(mlflow_server(backend, workdir / "artifacts"))
        extra = f", uri: '{url}'" + (f", storage: '{storage}'" if storage != beside else "")
        yield extra, {"storage": storage, "server_port": int(url.rsplit(":", 1)[1]), "postgres": kind != "server"}


def _server_cpu(port: int) -> float:
    """CPU seconds so far of the process group listening on ``port`` (the MLflow server and its workers)."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            pgid = os.getpgid(conn.pid)
            total = 0.0
            for proc in psutil.process_iter(["pid", "cpu_times"]):
                with contextlib.suppress(OSError):
                    if os.getpgid(proc.info["pid"]) == pgid and proc.info["cpu_times"] is not None:
                        total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
            return total
    return 0.0


def _postgres_cpu() -> float:
    """CPU seconds so far of this machine's ``postgres`` processes (the benchmark's own cluster)."""
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] == "postgres" and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


def run_once(conc: int, trials_per_slot: int, epochs: int, epoch_s: float, executor: str,
             tracking: str = "sqlite", bookkeeping: int = 0) -> dict[str, Any]:
    import optuna

    import hpo
    import hpo.loop as hl
    from hpo.epochs import EpochSink
    from hpo.search import open_storage

    n_trials = conc * trials_per_slot
    with tempfile.TemporaryDirectory() as tmp, C.PhaseTimer() as t, stores(tracking, Path(tmp)) as (extra, server):
        cwd = Path(tmp)
        (cwd / "synthetic.py").write_text(OBJECTIVE)
        cpus = round(2 / conc, 4) if executor == "ray" else 1
        (cwd / "spec.yaml").write_text(SPEC.format(conc=conc, n_trials=n_trials, folds=FOLDS, epochs=epochs,
                                                   epoch_s=epoch_s, executor=executor, cpus=cpus, tracking=extra))
        os.environ["CAPACITY_OUT"] = tmp
        t.wrap(hl.SearchLoop, "_launch", keep_calls=True)
        t.wrap(hl.SearchLoop, "_finish", keep_calls=True)
        t.wrap(hl.SearchLoop, "run", "search", keep_calls=True)
        chosen, threads = hl.bookkeeping_threads, []

        def bookkeeping_threads(spec, storage_url):  # hpo's choice, or the one asked for (--bookkeeping)
            threads.append(bookkeeping or chosen(spec, storage_url))
            return threads[-1]

        hl.bookkeeping_threads = bookkeeping_threads
        t.wrap(EpochSink, "epoch", "sink_epoch", keep_calls=True)  # in the driver's process on the local executor
        ray_cpu: dict[str, float] = {}
        if executor == "ray":  # the actors' CPU, read just before hpo ends its Ray
            import hpo.executors.ray as hr

            close, finish = hr.RayExecutor.close, hl.SearchLoop._finish
            marks: dict[str, float] = {}

            def stores_cpu(into: dict[str, float]) -> None:  # the driver's and the servers', as the actors'
                into["driver_cpu_s"] = _cpu_s()
                if "server_port" in server:
                    into["server_cpu_s"] = _server_cpu(server["server_port"])
                if server.get("postgres"):
                    into["postgres_cpu_s"] = _postgres_cpu()

            def close_after_reading(self, *a, **k):
                _ray_cpu(ray_cpu)
                stores_cpu(ray_cpu)
                marks["end"] = time.perf_counter()
                return close(self, *a, **k)

            def finish_and_mark(self, *a, **k):  # from the first finished trial on: the sink is up
                with first:  # bookkeeping threads finish trials at once: read the start once
                    if "start" not in marks:
                        _ray_cpu(ray_cpu0)
                        stores_cpu(ray_cpu0)
                        marks["start"] = time.perf_counter()
                return finish(self, *a, **k)

            first = threading.Lock()

            ray_cpu0: dict[str, float] = {}
            hr.RayExecutor.close = close_after_reading
            hl.SearchLoop._finish = finish_and_mark
        here = os.getcwd()
        os.chdir(cwd)
        try:
            server_cpu0 = _server_cpu(server["server_port"]) if "server_port" in server else 0.0
            db_cpu0 = _postgres_cpu() if server.get("postgres") else 0.0
            cpu0 = _cpu_s()
            t0 = time.perf_counter()
            result = hpo.run(cwd / "spec.yaml")
            wall = time.perf_counter() - t0
            cpu = _cpu_s() - cpu0
            server_cpu = _server_cpu(server["server_port"]) - server_cpu0 if "server_port" in server else None
            db_cpu = _postgres_cpu() - db_cpu0 if server.get("postgres") else None
        finally:
            os.chdir(here)
            hl.bookkeeping_threads = chosen
            if executor == "ray":
                hr.RayExecutor.close, hl.SearchLoop._finish = close, finish
                span = marks["end"] - marks["start"]
                ray_cpu = {k: v - ray_cpu0.get(k, 0.0) for k, v in ray_cpu.items()}
        study = optuna.load_study(study_name=f"capacity-c{conc}", storage=open_storage(server["storage"]))
        trials = [tr for tr in study.trials if tr.datetime_complete is not None]
        waits = [w for p in cwd.glob("reports-*.jsonl") for line in p.read_text().splitlines() for w in json.loads(line)]
    (search_start, search_s), = t.calls["search"]
    launches = [d for _, d in t.calls.get("_launch", [])]
    finishes = [d for _, d in t.calls.get("_finish", [])]
    sink = [d for _, d in t.calls.get("sink_epoch", [])]
    ends = sorted(tr.datetime_complete.timestamp() for tr in trials)
    # steady state: the middle half of the completions (the first wave all starts at once, the last drains)
    lo, hi = ends[len(ends) // 4], ends[(3 * len(ends)) // 4]
    steady = (len(ends) // 2) / (hi - lo) if hi > lo else None
    asked = len(trials) * FOLDS * epochs * epoch_s  # slot-seconds the trials asked for
    ms = lambda xs, q: None if not xs else round(1000 * C.percentile(xs, q), 2)  # noqa: E731
    return {"concurrency": conc, "executor": executor, "tracking": tracking, "bookkeeping": threads[0],
            "n_trials": len(trials), "wall_s": round(wall, 2),
            "search_s": round(search_s, 2), "trials_per_s": round(len(trials) / search_s, 2),
            "trials_per_s_steady": None if steady is None else round(steady, 2),
            "reports_per_s": round(len(waits) / search_s, 1), "reports": len(waits),
            "report_ms_p50": ms(waits, 50), "report_ms_p99": ms(waits, 99),
            "sink_epoch_ms_p50": ms(sink, 50), "sink_epoch_ms_p99": ms(sink, 99),
            "ask_ms_p50": ms(launches, 50), "ask_ms_p99": ms(launches, 99),
            "tell_ms_p50": ms(finishes, 50), "tell_ms_p99": ms(finishes, 99),
            "driver_cpu_share": round(cpu / wall, 2),
            "server_cpu_share": None if server_cpu is None else round(server_cpu / wall, 2),
            "postgres_cpu_share": None if db_cpu is None else round(db_cpu / wall, 2),
            # on Ray (the driver's and the servers' too): from the first finished trial to the end of the search
            **{k.replace("_cpu_s", "_cpu_share"): round(v / span, 2) for k, v in ray_cpu.items()},
            "efficiency": round(asked / (conc * search_s), 3),
            "counts": result.counts}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="concurrency 4, 2 trials per slot, 2 short epochs")
    ap.add_argument("--concurrency", default="8,32,128")
    ap.add_argument("--trials-per-slot", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--epoch-s", type=float, default=0.25)
    ap.add_argument("--executor", choices=("local", "ray"), default="local")
    ap.add_argument("--bookkeeping", type=int, default=0,
                    help="trials the driver launches and finishes at once (default: hpo's own choice)")
    ap.add_argument("--tracking", choices=("sqlite", "server", "postgres", "journal"), default="sqlite",
                    help="hpo's embedded sqlite stores, an MLflow server on sqlite, an MLflow server and Optuna "
                         "on PostgreSQL, or an MLflow server on PostgreSQL and Optuna on a journal file")
    return C.run_main(ap, argv, _main)


def _main(args) -> dict[str, Any]:
    concs = [4] if args.quick else [int(c) for c in args.concurrency.split(",")]
    per_slot, epochs, epoch_s = (2, 2, 0.05) if args.quick else (args.trials_per_slot, args.epochs, args.epoch_s)
    mach, vers = C.machine(), C.versions()
    rows = [run_once(c, per_slot, epochs, epoch_s, args.executor, args.tracking, args.bookkeeping) for c in concs]
    result = {"benchmark": "capacity", "quick": args.quick, "machine": mach, "versions": vers, "epochs": epochs,
              "epoch_s": epoch_s, "trials_per_slot": per_slot, "executor": args.executor, "tracking": args.tracking,
              "bookkeeping": args.bookkeeping, "rows": rows}
    C.emit(result)
    if not args.quick:
        C.RESULTS.mkdir(exist_ok=True)
        asked = f"_b{args.bookkeeping}" if args.bookkeeping else ""
        (C.RESULTS / f"capacity_{args.executor}_{args.tracking}{asked}.json").write_text(json.dumps(result, indent=2, default=str))
        C.write_section("capacity", render())
    return result


def render() -> str:
    """Section 8 of BENCHMARKS.md from every ``benchmarks/results/capacity_*.json`` (one per executor and stores)."""
    runs = [json.loads(p.read_text()) for p in sorted(C.RESULTS.glob("capacity_*.json"))]
    rows = []
    for r in runs:
        for x in r["rows"]:
            cpu = ", ".join(f"{k.replace('_cpu_share', '')} {x[k]:.2f}" for k in
                            ("driver_cpu_share", "sink_cpu_share", "workers_cpu_share", "server_cpu_share",
                             "postgres_cpu_share") if x.get(k) is not None)
            rows.append([f"{r['executor']} / {r['tracking']}", str(x["concurrency"]), str(x.get("bookkeeping", 1)),
                         str(x["n_trials"]),
                         f"{x['trials_per_s_steady']:.1f}", f"{x['reports_per_s']:.0f}",
                         f"{x['report_ms_p50']:.1f} / {x['report_ms_p99']:.0f}",
                         "—" if x.get("sink_epoch_ms_p50") is None else
                         f"{x['sink_epoch_ms_p50']:.1f} / {x['sink_epoch_ms_p99']:.0f}",
                         f"{x['ask_ms_p50']:.0f} / {x['ask_ms_p99']:.0f}", f"{x['tell_ms_p50']:.0f} / {x['tell_ms_p99']:.0f}",
                         cpu, f"{x['efficiency']:.2f}"])
    first = runs[0] if runs else {"machine": C.machine(), "versions": C.versions(), "epochs": 0, "epoch_s": 0,
                                  "trials_per_slot": 0}
    return "\n".join([
        "## 8. Capacity: concurrent trials through the service path", "",
        C.env_block(first["machine"], first["versions"],
                    "python -m benchmarks.capacity --concurrency C [--executor ray] [--tracking server|postgres|journal]"),
        f"Trials that sleep instead of training (`benchmarks/capacity.py`): {first['epochs']} epochs of "
        f"{first['epoch_s']} s on each of {FOLDS} folds, {first['trials_per_slot']} trials per slot, random sampler, "
        "full tracking. Stores: sqlite = hpo's embedded default; server = an MLflow server on sqlite; postgres = an "
        "MLflow server on PostgreSQL and Optuna on the same cluster; journal = the MLflow server on PostgreSQL and "
        "Optuna on a journal file. Steady = trials finished per second over the middle half of the completions; round = one "
        "`ctx.report` as the trial sees it, less the other fold's sleeping turn; sink = `EpochSink.epoch` in the "
        "driver (local executor); ask / tell = the driver's `_launch` (Optuna ask + MLflow child run) and "
        "`_finish` (tell + end of run + checkpoint); CPU = cores used over the search (on Ray the actors', from "
        "the first finished trial on, the driver's and the servers' too); bookkeeping threads = trials the driver launches and finishes at "
        "once (hpo's choice unless `--bookkeeping N`); efficiency = the sleep the trials asked for / (slots × search time).", "",
        C.table(["executor / stores", "concurrent", "bookkeeping threads", "trials", "steady trials/s", "epoch reports/s",
                 "round ms p50 / p99", "sink ms p50 / p99", "ask ms p50 / p99", "tell ms p50 / p99",
                 "CPU (cores)", "efficiency"], rows)])


if __name__ == "__main__":
    main()
