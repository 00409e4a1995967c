"""The Tracker: one experiment per study, a parent run per study, a nested child run per trial.

All writes go through the study's :class:`~hpo.outbox.Outbox` with explicit run ids (no
global active run), so trials on threads or other processes log into the right run, and an
outage of the tracking server is waited out (the outbox is private to this class: callers
ask :meth:`Tracker.retry`, :attr:`Tracker.gave_up` and friends).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hpo.epochs import CURVE_FLUSH_S, EpochSink
from hpo.errors import TrackingError
from hpo.outbox import Outbox, apply_http_defaults, spool_dir
from hpo.redact import redact
from hpo.sqlite_store import check_store, seed_mlflow_db, sqlite_path, use_wal
from hpo.tracking.names import (
    ATTEMPTS_TAG,
    BEST_PARAM_TAG,
    BEST_TAG,
    BEST_TRIAL_TAG,
    CHECKPOINT_DIR,
    FEASIBLE_TAG,
    GPU_TAG,
    MODEL_URI_TAG,
    PACKED_TAG,
    PARENT_TAG,
    PARETO_TAG,
    PROMOTE_TAG,
    REASON_TAG,
    REGISTERED_TAG,
    ROLE_TAG,
    SOURCE_TAG,
    SPEC_DIR,
    STATE_TAG,
    STATUS,
    STUDY_ROLE,
    STUDY_TAG,
    TRIAL_LOG,
    TRIAL_ROLE,
    TRIAL_TAG,
    TRIALS_TABLE,
    WORKER_TAG,
    best_param,
    study_summary,
    trial_metrics,
)

log = logging.getLogger("hpo")


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    """Param values as MLflow stores them: strings of at most 6,000 characters."""
    return {k: str(v)[:6000] for k, v in params.items()}


class Tracker:
    """Records one study in MLflow: tracking URI, experiment name, study name."""

    def __init__(self, uri: str, experiment: str, study: str, *, outage_timeout: float | None = None) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        db = sqlite_path(uri)
        if db is not None:
            check_store(uri, write=True)  # a read-only or damaged sqlite store: one clear error, nothing written
            seed_mlflow_db(uri)
            use_wal(uri)
        apply_http_defaults(uri)
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(f"MLflow experiment {experiment!r} is deleted in {redact(uri)}; restore it "
                                        "(mlflow experiments restore) or set tracking.experiment to another name")
                self.experiment_id = exp.experiment_id
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(f"cannot use the tracking store {redact(uri)}: {type(exc).__name__}: {redact(str(exc))}. "
                                "Check tracking.uri / --tracking-uri") from None
        self.experiment = experiment
        self.study = study
        self.parent_id: str | None = None
        self.spool = spool_dir(uri, study)
        kw = {} if outage_timeout is None else {"grace_s": outage_timeout}
        self.out = Outbox(self.client, self.spool, **kw)  # every write goes through it

    # ------------------------------------------------------------------ health: writes that wait out an outage

    def real_id(self, run_id: str | None) -> str | None:
        """The server's id of a run created while it was away (else ``run_id`` itself)."""
        return self.out.real_id(run_id)

    def retry(self) -> None:
        """Retry writes waiting for the server (at most every few seconds)."""
        self.out.flush()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for waiting writes to go out; True when none waits."""
        return self.out.drain(timeout)

    @property
    def gave_up(self) -> bool:
        """The server has been away longer than ``tracking.outage_timeout``: the study stops."""
        return self.out.gave_up

    @property
    def pending(self) -> int:
        """Writes waiting in the spool."""
        return self.out.pending

    @property
    def grace_s(self) -> float:
        """How long the server may be away before the study stops (``tracking.outage_timeout``)."""
        return self.out.grace_s

    @property
    def last_error(self) -> str:
        """The last error a write met."""
        return self.out.last_error

    def grace_left(self) -> float:
        """Seconds left of the outage grace period (0 while the server answers)."""
        if self.out.down_since is None:
            return 0.0
        return max(0.0, self.out.grace_s - (time.monotonic() - self.out.down_since))

    def went_down(self, exc: BaseException) -> None:
        """A direct call (model logging, the report) met an outage: count it as one."""
        self.out.went_down(exc)

    def sync_spool(self) -> None:
        """Send tracking writes an earlier run of this study left waiting (``hpo sync`` does the same).

        Only into the store they were made for: a spool that records another URI than this study's
        stops the run (exit 2, both named); writes the store refused stop it too (exit 1, see
        :class:`hpo.spool.SyncError`)."""
        from hpo.outbox import read_ids, sync
        from hpo.spool import failed_writes, resolve_target, waiting

        spool, uri, name = self.spool, self.uri, self.study
        if not waiting(spool) and not failed_writes(spool):
            return
        resolve_target(spool, uri, given_as="this study's tracking URI (tracking.uri or --tracking-uri)",
                       command=f"hpo sync {name}")
        sent, left = sync(self.client, spool)
        if left:
            raise TrackingError(f"{left} tracking writes of an earlier run of {name!r} wait in {spool} and "
                                f"{redact(uri)} does not take them yet; retry when it answers "
                                f"(hpo sync {name} --tracking-uri '{redact(uri)}')")
        log.warning("sent %d tracking writes an earlier run left waiting in %s", sent, spool)
        self.out.ids.update(read_ids(spool))

    def settle(self) -> tuple[int, str | None]:
        """Last try to send waiting writes, for what is left of the grace period; returns (writes still
        waiting, the message about writes the store refused — this process's and the Ray sink's — or None)."""
        from hpo.spool import failed_message, failed_writes

        self.out.drain(self.grace_left())  # what is left of the grace period; one last try once it is over
        failed = failed_writes(self.spool)
        return self.out.pending, (failed_message(failed, self.spool, self.uri) if failed else None)

    # ------------------------------------------------------------------ study (parent run)

    def find_study_run(self) -> str | None:
        """The parent run id of this study in its experiment, if there is one."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`{ROLE_TAG}` = '{STUDY_ROLE}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_study(self, spec: Any, settings: dict[str, Any], tags: dict[str, str], reuse: bool,
                    parent_id: str | None = None) -> str:
        """Open the study's parent run — a new one, or with ``reuse`` the known ``parent_id`` (else the
        one tagged with this study) — and log its spec and settings."""
        run_id = (parent_id or self.find_study_run()) if reuse else None
        if run_id is None:
            run_id = self.out.create_run(self.experiment_id, spec.name, {STUDY_TAG: spec.name, ROLE_TAG: STUDY_ROLE, **tags})
            self.out.log_batch(run_id, params=flat_params(settings))
            if spec.source:
                # the spec may carry a database URL with a password: never store it
                self.out.log_text(run_id, redact(spec.source), f"{SPEC_DIR}/{Path(spec.path or 'spec.yaml').name}")
        else:
            self.out.update_run(run_id, status="RUNNING")
            self.out.log_batch(run_id, tags=tags)
        self.parent_id = run_id
        if spec.tracking.system_metrics:
            self._start_system_metrics()
        return run_id

    def _start_system_metrics(self) -> None:
        """MLflow's own system metrics (``system/cpu_utilization_percentage``, memory, disk, network, GPU)
        on the parent run every 10 s while the study runs: machine-wide, not per trial. They bypass the
        outbox (MLflow's monitor writes them itself), so an outage loses those samples and nothing else."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self._system = SystemMetricsMonitor(self.out.real_id(self.parent_id), tracking_uri=self.uri,
                                                resume_logging=True)
            self._system.start()
        except Exception as exc:  # noqa: BLE001 - a missing psutil, say: the study runs without them
            self._system = None
            log.warning("MLflow's system metrics are off for this study: %s", exc)

    def end_study(self, status: str = "FINISHED") -> None:
        """Close the parent run (and stop MLflow's system metrics, when on)."""
        system = getattr(self, "_system", None)
        if system is not None:
            self._system = None
            try:
                system.finish()
            except Exception as exc:  # noqa: BLE001 - the last sample is not worth a failed study
                log.warning("MLflow's system metrics did not stop cleanly: %s", exc)
        if self.parent_id:
            self.out.set_terminated(self.parent_id, status=status)

    # ------------------------------------------------------------------ trials (child runs)

    def start_trial(self, number: int, params: dict[str, Any], sampled: dict[str, Any],
                    source: str | None = None) -> str:
        """Create the nested child run of trial ``number`` with all its parameters (``source``: where
        an enqueued trial's parameters came from, tagged ``hpo.source``)."""
        tags = {PARENT_TAG: self.parent_id, STUDY_TAG: self.study, ROLE_TAG: TRIAL_ROLE,
                TRIAL_TAG: str(number), STATE_TAG: "running"}
        if source:
            tags[SOURCE_TAG] = source[:500]
        run_id = self.out.create_run(self.experiment_id, trial_run_name(number, sampled), tags)
        self.out.log_batch(run_id, params=flat_params(params))
        return run_id

    def end_trial(self, run_id: str, result: Any, metric: str) -> None:
        """Final CV metrics, state and duration of a trial, and the last curve points its epoch sink
        had not sent (``result.curves``); closes its run."""
        ts = int(time.time() * 1000)
        metrics = trial_metrics(metric, result)
        tags = {STATE_TAG: result.state, ATTEMPTS_TAG: str(result.attempts)}
        if result.worker:
            tags[WORKER_TAG] = result.worker[:500]
            if " cuda " in f" {result.worker} ":
                tags[GPU_TAG] = result.worker.split(" cuda ", 1)[1][:500]
        if result.reason:
            tags[REASON_TAG] = result.reason[:5000]
        if result.packed:
            tags[PACKED_TAG] = result.packed[:5000]
        if result.feasible is not None:
            tags[FEASIBLE_TAG] = str(result.feasible).lower()
        end = [(k, float(v), ts, 0) for k, v in metrics.items()]
        try:
            self.out.log_batches(run_id, [*result.curves, *end], tags)
        except Exception as exc:  # the trial's result stands when only its last curve points are refused
            if not result.curves:
                raise
            log.warning("trial %d: its last curve points could not be logged to MLflow (%s); its end metrics "
                        "are logged without them", result.number, exc)
            self.out.log_batch(run_id, metrics=end, tags=tags)
        if result.log:
            self.out.log_text(run_id, result.log, TRIAL_LOG)
        self.out.set_terminated(run_id, status=STATUS[result.state])

    def epoch_sink(self, study: Any, key: str, flush_s: float = CURVE_FLUSH_S) -> Any:
        """The :class:`~hpo.epochs.EpochSink` of this study's trials in this process (it logs their
        curves through this tracker's outbox, a batch every ``flush_s`` seconds of a running trial)."""
        return EpochSink(self.out, study, key, flush_s=flush_s)

    # ------------------------------------------------------------------ artifacts

    def log_checkpoint(self, run_id: str, local: Path) -> None:
        """Upload a checkpoint file into the run's ``checkpoint/`` folder."""
        self.out.log_artifact(run_id, local, CHECKPOINT_DIR)

    def drop_checkpoint(self, run_id: str) -> None:
        """Delete a run's ``checkpoint/`` folder (its trial left the top k)."""
        self.out.delete_artifacts(run_id, CHECKPOINT_DIR)

    def kill_run(self, run_id: str) -> None:
        """Close an interrupted trial's run: KILLED, ``hpo.state`` killed (it re-runs on resume)."""
        self.out.set_terminated(run_id, status="KILLED")
        self.out.set_tag(run_id, STATE_TAG, "killed")

    def log_result(self, *, metric: str, best: Any, refit_epochs: int, test_metrics: dict[str, float],
                   counts: dict[str, int], model_uri: str | None) -> None:
        """The study's result on the parent run: metrics (best CV value, test metrics, counts), the best
        parameters as ``best_*`` params (MLflow params are immutable: a resume keeps the first ones)
        and ``hpo.best.*`` tags (these move), the best trial and the model URI."""
        ts = int(time.time() * 1000)
        metrics = study_summary(metric, best.values[0], best.number, refit_epochs, test_metrics, counts)
        existing = self.client.get_run(self.out.real_id(self.parent_id)).data.params
        params = {best_param(k): v for k, v in best.params.items()}
        new_params = {k: v for k, v in flat_params(params).items() if k not in existing}
        tags = {f"{BEST_PARAM_TAG}{k}": str(v) for k, v in best.params.items()}
        tags[BEST_TRIAL_TAG] = str(best.number)
        if model_uri:
            tags[MODEL_URI_TAG] = model_uri
        self.out.log_batch(self.parent_id, metrics=[(k, float(v), ts, 0) for k, v in metrics.items()],
                           params=new_params, tags=tags)

    def log_study_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics on the parent run (the study's compute: ``study/*``)."""
        ts = int(time.time() * 1000)
        self.out.log_batch(self.parent_id, metrics=[(k, float(v), ts, 0) for k, v in metrics.items()])

    def log_model(self, model: Any, dataset: Any, *, name: str, code: Any = ()) -> tuple[str, str | None]:
        """Log the refit ``model`` on the parent run and register it as ``name``; returns its URI and the
        registered version (see :func:`hpo.tracking.models.log_model`)."""
        from hpo.tracking.models import log_model

        return log_model(model, dataset, uri=self.uri, parent_id=self.out.real_id(self.parent_id), name=name,
                         code=code)

    def register(self, spec: Any, version: str, test_metrics: dict[str, float]) -> Any:
        """Aliases of the newly registered ``version`` of the refit model (``tracking.alias``, and
        ``tracking.promote``'s decision, also tagged on the parent run); returns its
        :class:`~hpo.tracking.registry.Registered`."""
        from hpo._spec_tracking import promote_metric
        from hpo.tracking.registry import set_aliases

        t = spec.tracking
        metric, direction = promote_metric(t, spec.metric, spec.direction) if t.promote else (None, None)
        registered = set_aliases(self.client, name=spec.registered_model, version=version,
                                 test_metrics=test_metrics, alias=t.alias, promote=t.promote, metric=metric,
                                 direction=direction)
        tags = {REGISTERED_TAG: registered.describe()}
        if registered.decision:
            tags[PROMOTE_TAG] = registered.decision[:5000]
        self.out.log_batch(self.parent_id, tags=tags)
        return registered

    def stored_model(self) -> Any:
        """The refit model read back from the parent run's checkpoint, or None."""
        from hpo.tracking.models import stored_model

        return stored_model(self.out.real_id(self.parent_id), self.uri)

    def log_trials_table(self, study: Any) -> None:
        """Optuna's trials table as ``trials.csv`` on the parent run."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="hpo-") as tmp:
            path = Path(tmp) / TRIALS_TABLE
            study.trials_dataframe().to_csv(path, index=False)
            self.log_parent_file(path)

    def mark_front(self, members: list[str]) -> None:
        """The ``pareto`` tag on the runs of the Pareto front's trials (``members``), and off the runs
        that had it before (a resumed study whose front moved)."""
        tagged = {r.info.run_id for r in self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{self.study}' and "
            f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}' and tags.`{PARETO_TAG}` = 'true'", max_results=50000)}
        for run_id in members:
            if run_id not in tagged:
                self.out.set_tag(run_id, PARETO_TAG, "true")
        for run_id in tagged - set(members):
            self.out.delete_tag(run_id, PARETO_TAG)

    def log_parent_text(self, text: str, artifact_file: str) -> None:
        """``text`` as the parent run's artifact ``artifact_file`` (the study's log)."""
        self.out.log_text(self.parent_id, text, artifact_file)

    def log_parent_file(self, local: Path) -> None:
        """Upload ``local`` to the root of the parent run's artifacts."""
        self.out.log_artifact(self.parent_id, local, None)

    def tag_study(self, key: str, value: str) -> None:
        """Set tag ``key`` on the parent run."""
        self.out.set_tag(self.parent_id, key, value[:5000])

    def fail_study(self, reason: str) -> None:
        """The parent run ends FAILED with ``reason`` (the refit, model logging or report failed)."""
        self.out.set_tag(self.parent_id, REASON_TAG, reason[:5000])
        self.end_study("FAILED")

    def move_best(self, old: str | None, new: str) -> None:
        """Move the ``best`` tag from run ``old`` (if any) to run ``new``; a tag already gone is fine."""
        if old and old != new:
            self._drop_best(old)
        self.out.set_tag(new, BEST_TAG, "true")

    def _drop_best(self, run_id: str) -> None:
        try:
            self.out.delete_tag(run_id, BEST_TAG)
        except Exception as exc:
            if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise

    def repair_best(self, run_id: str) -> None:
        """Make ``run_id`` the only trial run of this study tagged ``best`` (on resume: an earlier run may
        have stopped between telling Optuna and moving the tag)."""
        try:
            tagged = self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.`{STUDY_TAG}` = '{self.study}' and "
                f"tags.`{ROLE_TAG}` = '{TRIAL_ROLE}' and tags.`{BEST_TAG}` = 'true'")
        except Exception as exc:  # the tag is cosmetic: the next better trial moves it anyway
            log.warning("could not check which run carries the best tag: %s", exc)
            return
        ids = {r.info.run_id for r in tagged}
        for other in ids - {run_id}:
            self._drop_best(other)
        if run_id not in ids:
            self.out.set_tag(run_id, BEST_TAG, "true")


def trial_run_name(number: int, sampled: dict[str, Any]) -> str:
    """A child run name a person can read in the runs table, e.g. ``trial-007 lr=3.1e-03 optimizer=adamw``."""
    parts = []
    for k, v in sampled.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.2g}")
        else:
            parts.append(f"{k}={v}")
    return (f"trial-{number:03d} " + " ".join(parts)).strip()[:250]


