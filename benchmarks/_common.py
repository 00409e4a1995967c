"""Shared helpers for the benchmarks: machine description, statistics, BENCHMARKS.md sections.

Every benchmark is ``python -m benchmarks.<name> [--quick] [--repeats N]``; it prints JSON
and, without ``--quick``, replaces its own section of ``BENCHMARKS.md`` (between the markers
``<!-- name:start -->`` and ``<!-- name:end -->``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- machine and versions


def machine() -> dict[str, Any]:
    """nproc, memory, CPU model, load average, date: what a number was measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"nproc": os.cpu_count(), "mem_gib": mem_gib, "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_at_start": load,
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def versions(*extra: str) -> dict[str, str]:
    """Versions of torch, optuna, mlflow, sklearn (and any ``extra`` importable module)."""
    out: dict[str, str] = {}
    for name in ("torch", "optuna", "mlflow", "sklearn", *extra):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception:  # not installed: say so
            out[name] = "not installed"
    return out


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def command() -> str:
    """How this benchmark was started, as ``python -m benchmarks.<name> ARGS``."""
    return " ".join(["python -m benchmarks." + Path(sys.argv[0]).stem, *sys.argv[1:]])


# --------------------------------------------------------------------------- statistics


def summarize(values: list[float], digits: int = 3) -> dict[str, Any]:
    """median, min, max, and the spread (max-min)/median, of a list of measurements."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    med = statistics.median(vals)
    return {"median": round(med, digits), "min": round(min(vals), digits), "max": round(max(vals), digits),
            "spread_pct": round(100 * (max(vals) - min(vals)) / med, 1) if med else None, "n": len(vals)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def med_range(s: dict[str, Any], digits: int = 2, unit: str = "") -> str:
    """``12.3 s (11.9–13.0)`` from a :func:`summarize` dict."""
    if not s or s.get("median") is None:
        return "—"
    if s.get("n", 0) <= 1:
        return f"{s['median']:.{digits}f}{unit}"
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


# --------------------------------------------------------------------------- timing by wrapping


class PhaseTimer:
    """Wraps methods of a class (or functions of a module) to add their wall time to named phases.

    Used from outside hpo: ``with PhaseTimer() as t: t.wrap(StudyRunner, "_search") ...``.
    Nested phases are recorded as they are (a phase inside another is also counted in its parent).
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.calls: dict[str, list[tuple[float, float]]] = {}  # name -> [(start, duration)]
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, name: str | None = None, keep_calls: bool = False) -> None:
        original = getattr(owner, attr)
        label = name or attr
        timer = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                timer.totals[label] = timer.totals.get(label, 0.0) + dt
                if keep_calls:
                    timer.calls.setdefault(label, []).append((t0, dt))

        setattr(owner, attr, wrapper)
        self._undo.append(lambda: setattr(owner, attr, original))

    def __enter__(self) -> PhaseTimer:
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0


# --------------------------------------------------------------------------- output


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace ``<!-- name:start -->...<!-- name:end -->`` in BENCHMARKS.md with ``body`` (or append it)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def env_block(mach: dict[str, Any], vers: dict[str, str], cmd: str) -> str:
    v = ", ".join(f"{k} {val}" for k, val in vers.items())
    return (f"- command: `{cmd}`\n"
            f"- machine: {mach['nproc']} cores ({mach['cpu']}), {mach['mem_gib']} GiB, {mach['platform']}, "
            f"Python {mach['python']}; load average at start {mach['loadavg_at_start']}\n"
            f"- versions: {v}\n"
            f"- date: {mach['date']}\n")


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |")
    return "\n".join(out)


def early_threads() -> None:
    """Called by a benchmark run as a script, before numpy/torch load: ``--threads N`` (default 1)
    becomes OMP/MKL/OpenBLAS_NUM_THREADS, so that threads created later (hpo's trial pool,
    Optuna's n_jobs, subprocesses) get it too -- ``torch.set_num_threads`` alone only reaches
    the calling thread's OpenMP team."""
    n = "1"
    if "--threads" in sys.argv[:-1]:
        n = sys.argv[sys.argv.index("--threads") + 1]
    if n != "0":
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = n


class pinned_threads:
    """Run with ``n`` intra-op threads (torch, and OpenMP/BLAS via threadpoolctl); restores them after.

    On this 2-core machine, shared with other sessions' test suites, torch's default of 2
    OpenMP threads made the very same small training run take anywhere from 0.6 s to 14 s
    (process CPU time inflating with it: OpenMP threads spin-waiting for a descheduled peer);
    with 1 thread the same run took 0.65-0.8 s every time. Every contender runs under the same
    setting; Ray workers with ``num_cpus=1`` get ``OMP_NUM_THREADS=1`` from Ray anyway.
    ``n = 0`` leaves the libraries' defaults alone.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._limits = None
        self._before: int | None = None

    def __enter__(self) -> pinned_threads:
        if self.n > 0:
            import torch
            from threadpoolctl import threadpool_limits

            self._before = torch.get_num_threads()
            torch.set_num_threads(self.n)
            self._limits = threadpool_limits(self.n)
            os.environ["OMP_NUM_THREADS"] = str(self.n)  # subprocesses started from here
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._before is not None:
            import torch

            torch.set_num_threads(self._before)
        if self._limits is not None:
            self._limits.restore_original_limits()


def run_main(ap: Any, argv: list[str] | None, main: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """A benchmark's entry point: ``ap`` gets the shared ``--threads`` flag, then ``main(args)`` runs with
    quiet logs and that many intra-op threads for every contender."""
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for every contender (0 = library defaults)")
    args = ap.parse_args(argv)
    quiet_logs()
    with pinned_threads(args.threads):
        return main(args)


def quiet_logs() -> None:
    """Keep MLflow/Optuna/alembic chatter off stdout so the JSON stays readable."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "optuna", "ray", "ray.tune", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
