"""The search loop: Optuna asks, the executor trains, Optuna is told; until the study should stop.

ask -> suggest -> the trial's MLflow run -> :class:`~hpo.trial.TrialSpec` -> executor ->
:class:`~hpo.trial.TrialResult` -> tell by state + end of the run + top-k checkpoint + ``best`` tag.

Every reason to stop is kept in one place, :class:`Stops`: a signal or a lost tracking server
(running trials are told to stop after their epoch and come back KILLED: re-queued on
``--resume``), too many failures, the timeout, the budget (no new trials; running ones finish).
The first reason is kept for the messages. The loop knows the executor, the tracker and the
Optuna study only through their small surfaces.

Bookkeeping (ask + open the run; tell + close the run) is one chain of round trips per trial. With
``bookkeeping > 1`` the loop does that many trials' bookkeeping at once on threads (Optuna's
storages and MLflow's client are safe to share between threads, as ``study.optimize(n_jobs=…)``
does): behind a tracking server or a database the driver otherwise spends its time waiting, one
trial after another. Optuna's ask + suggest still go one at a time (each sees the trials asked
before it, as without threads); what must stay in order after a trial (stop rules, top-k
checkpoints, the ``best`` tag, the results and the display) is done under one lock.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from hpo import space
from hpo.metrics import is_better
from hpo.redact import redact
from hpo.search import tell
from hpo.selection import first_value, is_feasible
from hpo.stop_rules import PLATEAU, TARGET, StopRules
from hpo.trial import COMPLETE, FAILED, INTERRUPTED_ATTR, KILLED, RUN_ID_ATTR, TrialResult, TrialSpec
from hpo.warm_start import SOURCE_ATTR

log = logging.getLogger("hpo")

SIGNAL, TRACKING, FAILURES, TIMEOUT = "signal", "tracking", "failures", "timeout"
HALTING = (SIGNAL, TRACKING)  # reasons that also stop the running trials
WHY = {SIGNAL: "SIGINT/SIGTERM", TRACKING: "the tracking server was unreachable"}  # in a stopped trial's reason


BOOKKEEPING_THREADS = 4  # trials launched and finished at once on Ray behind a server (BENCHMARKS.md §8)


def bookkeeping_threads(spec: Any, storage_url: str) -> int:
    """How many trials' bookkeeping the loop does at once for ``spec`` (Optuna at ``storage_url``).

    Several on Ray when a store is a server (MLflow over HTTP, Optuna on PostgreSQL/MySQL): the driver
    trains nothing there and otherwise waits on one round trip after another (measured 1.26x the
    trials per second at 32 trials in flight). One otherwise: on the embedded sqlite stores the driver
    is busy computing, not waiting, and with the local executor the trials share its interpreter;
    neither got faster with threads (measured)."""
    if spec.execution.executor != "ray":
        return 1
    from hpo.journal_store import journal_path

    local = storage_url.startswith("sqlite:") or journal_path(storage_url) is not None
    served = not (spec.tracking.uri.startswith("sqlite:") and local)
    return min(BOOKKEEPING_THREADS, spec.execution.max_concurrent_trials) if served else 1


class Stops:
    """Why the study takes no new trials: every reason, the first one kept (``first``)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def add(self, reason: str) -> bool:
        """Record ``reason``; True when it is new (say it once)."""
        if reason in self.reasons:
            return False
        self.reasons.append(reason)
        return True

    @property
    def first(self) -> str | None:
        """The reason the study stopped for (the first recorded)."""
        return self.reasons[0] if self.reasons else None

    @property
    def halting(self) -> str | None:
        """The first reason that stops running trials too (signal, tracking lost), if any."""
        return next((r for r in self.reasons if r in HALTING), None)

    def __contains__(self, reason: str) -> bool:
        return reason in self.reasons


class TopK:
    """The ``keep`` best complete trials, so their checkpoints can be kept and the rest deleted."""

    def __init__(self, keep: int, direction: str) -> None:
        self.keep, self.sign = keep, (-1.0 if direction == "maximize" else 1.0)
        self.entries: list[tuple[float, int, str]] = []  # (sort key, number, run_id)

    def offer(self, value: float, number: int, run_id: str) -> tuple[bool, list[str]]:
        """Add a trial; returns (kept, run ids that dropped out)."""
        if self.keep <= 0 or not math.isfinite(value):
            return False, []
        self.entries.append((self.sign * value, number, run_id))
        self.entries.sort()
        dropped = [e[2] for e in self.entries[self.keep:]]
        self.entries = self.entries[: self.keep]
        kept = any(e[1] == number for e in self.entries)
        return kept, [r for r in dropped if r != run_id]


class SearchLoop:
    """Runs trials of ``study`` on ``executor`` until ``target`` are finished or a :class:`Stops` reason.

    ``dataset``: the study's data (its shapes go into kept checkpoints); ``interrupts``: the
    study's :class:`~hpo.interrupts.Interrupts` (trial bookkeeping is never cut in half);
    ``progress``: the live display, or None; ``bookkeeping``: how many trials are launched and
    finished at once (1: one after another; see the module docstring).
    """

    def __init__(self, spec: Any, study: Any, tracker: Any, executor: Any, dataset: Any, *,
                 interrupts: Any, progress: Any = None, started: float | None = None, pack: bool = False,
                 on_best: Any = None, bookkeeping: int = 1) -> None:
        self.spec, self.study, self.tracker, self.executor, self.dataset = spec, study, tracker, executor, dataset
        self.pack = pack  # trials train their folds as one stacked model (hpo.packing.study_packing)
        self.interrupts, self.progress = interrupts, progress
        self.on_best = on_best  # called with a trial's result when it beats the best so far (notifications)
        self.started = time.perf_counter() if started is None else started
        self.stops = Stops()
        self.results: list[TrialResult] = []
        self.launched_at: dict[int, float] = {}  # trial number -> when it was handed to the executor
        self.busy: list[tuple[float, float]] = []  # (handed over, told) of every finished trial, driver clock
        self.bookkeeping = max(1, bookkeeping)
        self.pending: dict[Future, tuple[Any, str, dict[str, Any]]] = {}  # trials in flight
        # trials asked but not yet handed to the executor, by number: (trial, run id, params)
        self.launching: dict[int, tuple[Any, str | None, dict[str, Any] | None]] = {}
        self.settling: dict[int, tuple[Any, str, dict[str, Any]]] = {}  # trials back, being told and closed
        self.in_flight = 0  # trials launched whose result is not back yet (at most max_concurrency)
        self._lock = threading.RLock()  # the loop's state and the ordered part of finishing a trial
        self._asking = threading.Lock()  # Optuna's ask + suggest: CPU in this process, no gain from overlapping
        self._closing = False  # the loop is ending: bookkeeping threads launch nothing more
        self.topk = TopK(spec.tracking.keep_checkpoints, spec.direction)
        self.best_run: str | None = None
        self.best_value: float | None = None
        self.rules = StopRules(spec.search.stop, spec.direction, spec.metric)

    # ------------------------------------------------------------------ state carried over on resume

    def know_complete(self, trials: list[Any]) -> None:
        """Take the stored complete trials into the top k and the best (a resumed study)."""
        for t in trials:
            run_id = self.tracker.real_id(t.user_attrs.get(RUN_ID_ATTR))
            value = first_value(t)
            if run_id and value is not None and is_feasible(t):
                self.topk.offer(value, t.number, run_id)
                if is_better(value, self.best_value, self.spec.direction):
                    self.best_value, self.best_run = value, run_id
        if self.best_run is not None:  # a crash between tell and the tag move left it elsewhere, or nowhere
            self.tracker.repair_best(self.best_run)

    def know_finished(self, trials: list[Any]) -> None:
        """Replay the stored finished trials into the stop rules (a resumed study)."""
        self.rules.replay(trials)

    # ------------------------------------------------------------------ stopping

    def stop(self, reason: str) -> None:
        """Stop for ``reason``: no new trials; for a signal or lost tracking running trials stop too."""
        with self._lock:
            if not self.stops.add(reason):
                return
        if reason in HALTING:
            self.executor.stop_trials()
        if self.progress is None:
            return
        if reason == SIGNAL:
            self.progress.message("stopping: no new trials; running ones stop after their epoch "
                                  "(press Ctrl-C again to stop now)")
        elif reason == TRACKING:
            self.progress.message(f"the tracking server {redact(self.spec.tracking.uri)} has not answered for "
                                  f"{self.tracker.grace_s:.0f}s ({self.tracker.last_error}): stopping; "
                                  "running trials stop after their epoch")
        elif reason in (TARGET, PLATEAU):
            self.progress.message(f"stopping early, {self.rules.describe(reason)}: no new trials")
        elif reason == FAILURES:
            failed = sum(r.state == FAILED for r in self.results)
            self.progress.message(f"{failed} trials failed (search.max_failures = {self.spec.search.max_failures}): "
                                  "no new trials")

    def stop_reason(self, target: int) -> str | None:
        """Why the search ended, for the summary and the parent run (None after a signal or lost tracking)."""
        first = self.stops.first
        if first in (TARGET, PLATEAU):
            return self.rules.describe(first)
        if first == FAILURES:
            return f"failures: {sum(r.state == FAILED for r in self.results)} trials failed (search.max_failures = " \
                   f"{self.spec.search.max_failures})"
        if first == TIMEOUT:
            return f"timeout: search.timeout of {self.spec.search.timeout:g} s reached"
        if first is None:
            return f"budget: {target} finished trials"
        return None

    @property
    def tracking_lost(self) -> bool:
        """Whether the study stopped because the tracking server was gone too long."""
        return TRACKING in self.stops

    def _may_launch(self, launched: int, remaining: int) -> bool:
        if self.stops.halting or launched >= remaining or self.in_flight >= self.executor.max_concurrency:
            return False
        limit = self.spec.search.max_failures
        if limit is not None and sum(r.state == FAILED for r in self.results) >= limit:
            self.stop(FAILURES)
            return False
        timeout = self.spec.search.timeout
        if timeout is not None and time.perf_counter() >= self.started + timeout:
            self.stop(TIMEOUT)
            return False
        rule = self.rules.reason()
        if rule is not None:
            self.stop(rule)
            return False
        return True

    def check_tracking(self) -> None:
        """Retry waiting tracking writes; stop the study when the server has been gone too long
        (the driver's writes, or the epoch sink's: on Ray the sink actor's own)."""
        self.tracker.retry()
        if self.stops.halting is None and (self.tracker.gave_up or self.executor.tracking_lost()):
            self.stop(TRACKING)

    # ------------------------------------------------------------------ the loop

    def run(self, target: int, done_before: int) -> None:
        """Launch and finish trials until ``target`` finished trials (``done_before`` already are)."""
        remaining = max(0, target - done_before)
        if self.progress is not None:
            self.progress.start(self.spec, total=target, done=done_before)
        launched = 0
        pool = (ThreadPoolExecutor(self.bookkeeping, thread_name_prefix="hpo-bookkeeping")
                if self.bookkeeping > 1 else None)
        jobs: set[Future] = set()  # bookkeeping on the pool's threads
        self._closing = False
        try:
            while True:
                while self._may_launch(launched, remaining):
                    launched += 1
                    with self._lock:
                        self.in_flight += 1
                    if pool is not None:
                        jobs.add(pool.submit(self._launch))
                    elif self._launch().done():
                        break
                with self._lock:
                    running = list(self.pending)
                if not running and not jobs:
                    break
                finished, _ = wait(running + list(jobs), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    if fut in jobs:
                        jobs.discard(fut)
                        fut.result()  # a bookkeeping error ends the loop here, as it would without threads
                        continue
                    with self.interrupts.held():
                        with self._lock:
                            entry = self.pending.pop(fut)
                            self.settling[entry[0].number] = entry
                            self.in_flight -= 1
                        if pool is not None:
                            jobs.add(pool.submit(self._finish, fut.result(), *entry))
                        else:
                            self._finish(fut.result(), *entry)
                self.check_tracking()
        finally:
            self._closing = True
            try:
                if pool is not None:
                    with self.interrupts.held():  # what was begun is finished: no trial is left half told
                        pool.shutdown(wait=True)
            finally:
                if self.progress is not None:
                    self.progress.stop()

    def _held(self) -> Any:
        """Signals wait while the block runs, on the loop's own thread (the pool's threads are waited for)."""
        return self.interrupts.held() if self.bookkeeping == 1 else contextlib.nullcontext()

    def _launch(self) -> Future | None:
        """Ask Optuna for a trial, open its run, hand it to the executor; the trial is in ``launching``
        until the executor has it (the inline executor runs the whole trial in ``submit``), then in
        ``pending`` until its result is back. None: the loop was ending, nothing was asked."""
        spec = self.spec
        with self._held():
            if self._closing:
                with self._lock:
                    self.in_flight -= 1
                return None
            with self._asking:  # one ask at a time: each sees the trials asked before it (a grid point runs once)
                trial = self.study.ask()
                with self._lock:
                    self.launching[trial.number] = (trial, None, None)
                sampled = space.suggest(trial, spec)
            params = space.resolve(spec, sampled)
            run_id = self.tracker.start_trial(trial.number, params, sampled, source=trial.user_attrs.get(SOURCE_ATTR))
            with self._lock:
                self.launching[trial.number] = (trial, run_id, params)
            trial.set_user_attr(RUN_ID_ATTR, run_id)
        ts = TrialSpec(number=trial.number, params=params, model=spec.model, metric=spec.metric,
                       direction=spec.direction, seed=spec.search.seed, run_id=run_id, pack=self.pack,
                       objective=spec.is_objective, keep_weights=spec.tracking.keep_checkpoints > 0,
                       fold_by_fold=spec.search.pruner == "wilcoxon",
                       inference=any(m == "inference_ms" for m in spec.cost_metrics),
                       log_max_bytes=spec.tracking.log_max_kb * 1024)
        self.launched_at[trial.number] = time.perf_counter()
        fut = self.executor.submit(ts)
        with self._held(), self._lock:
            self.pending[fut] = self.launching.pop(trial.number)
        return fut

    def _finish(self, result: TrialResult, trial: Any, run_id: str, params: dict[str, Any]) -> None:
        """Tell Optuna and close the trial's run; then, in order under the loop's lock, the stop rules,
        the top-k checkpoint, the ``best`` tag, the results and the display."""
        if result.state == KILLED:  # the epoch sink stopped it: say why the study stopped
            if self.stops.halting is None and self.executor.tracking_lost(wait_s=10.0):
                self.stop(TRACKING)
            result.reason = f"interrupted ({WHY[self.stops.halting or SIGNAL]}); re-queued on --resume"
        self.busy.append((self.launched_at.pop(trial.number, time.perf_counter()), time.perf_counter()))
        tell(self.study, trial, result, self.spec)
        self.tracker.end_trial(run_id, result, self.spec.metric)
        with self._lock:
            if result.state != KILLED:  # an interrupted trial re-runs: it is not finished; an infeasible one has no value
                self.rules.observe(result.value if result.state == COMPLETE and result.feasible is not False else None)
            if result.state == COMPLETE and result.value is not None and result.feasible is not False:
                self._keep_checkpoint(result, run_id, params)
                if is_better(result.value, self.best_value, self.spec.direction):
                    self.tracker.move_best(self.best_run, run_id)
                    self.best_value, self.best_run = result.value, run_id
                    if self.on_best is not None:
                        self.on_best(result)
            result.checkpoint = None  # weights are on disk now (or not needed); keep driver memory flat
            result.curves = []  # logged with the trial's end
            self.results.append(result)
            self.settling.pop(trial.number, None)
            if self.progress is not None:
                self.progress.trial_done(result, self.best_value)

    def _keep_checkpoint(self, result: TrialResult, run_id: str, params: dict[str, Any]) -> None:
        import tempfile

        from hpo.checkpoint import save_checkpoint

        kept, dropped = self.topk.offer(result.value, result.number, run_id)
        if kept and result.checkpoint is not None:
            ds = self.dataset
            with tempfile.TemporaryDirectory(prefix="hpo-") as tmp:  # the outbox keeps its own copy while offline
                path = save_checkpoint(Path(tmp) / "trial.pt", model=self.spec.model, objective=self.spec.is_objective,
                                       params=params,
                                       input_shape=ds.input_shape, n_outputs=ds.n_classes or 1,
                                       regression=ds.n_classes == 0, folds=result.checkpoint["folds"],
                                       extra={"best_epochs": result.fold_best_epochs, "trial": result.number})
                self.tracker.log_checkpoint(run_id, path)
        for old in dropped:
            try:
                self.tracker.drop_checkpoint(old)
            except Exception as exc:  # a checkpoint we cannot delete costs disk, not correctness
                log.warning("could not delete the checkpoint of run %s: %s", old, exc)

    def abandon(self) -> None:
        """Record trials still open (in flight, being launched or told) as interrupted so a resume re-queues them."""
        from optuna.trial import TrialState

        with self._lock:  # run() has ended: its bookkeeping threads are done
            open_trials = [*self.pending.values(), *self.launching.values(), *self.settling.values()]
            self.pending, self.launching, self.settling = {}, {}, {}
        for trial, run_id, _ in open_trials:
            try:
                trial.set_user_attr(INTERRUPTED_ATTR, True)
                self.study.tell(trial, state=TrialState.FAIL)
            except Exception as exc:  # keep going: the rest must still be closed
                log.warning("could not close trial %s: %s", trial.number, exc)
            if run_id is not None:
                try:
                    self.tracker.kill_run(run_id)
                except Exception as exc:
                    log.warning("could not close the run of trial %s: %s", trial.number, exc)
