"""MLflow adapter: one experiment per study, a parent run per study, a nested child run per trial.

All calls go through :class:`mlflow.MlflowClient` with explicit run ids (no global active
run), so trials on threads or other processes log into the right run. A running trial's
curves go out in batches through the epoch sink (:mod:`hpo.epochs`).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hpo.errors import TrackingError
from hpo.outbox import Outbox, apply_http_defaults, spool_dir
from hpo.redact import redact
from hpo.sqlite_store import check_store, seed_mlflow_db, sqlite_path, store_lock, use_wal  # noqa: F401 (re-exported)

log = logging.getLogger("hpo")

STUDY_TAG = "hpo.study"
ROLE_TAG = "hpo.role"  # "study" on the parent run, "trial" on child runs
PARENT_TAG = "mlflow.parentRunId"  # what makes MLflow show a run nested under its parent
CHECKPOINT_DIR = "checkpoint"
BEST_TAG = "best"  # on the one trial run with the best value so far
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


def lineage_tags(spec: Any) -> dict[str, str]:
    """The parent run's lineage tags: spec hash, seed, versions, the user's code hashes, the git commit."""
    import mlflow
    import optuna
    import torch

    import hpo
    from hpo.usercode import load_target, source_hash

    tags = {
        "hpo.spec_hash": spec.spec_hash,
        "hpo.seed": str(spec.search.seed),
        "hpo.version": hpo.__version__,
        "torch.version": torch.__version__,
        "optuna.version": optuna.__version__,
        "mlflow.version": mlflow.__version__,
    }
    for tag, target, group in (("hpo.code_hash", spec.model if spec.is_factory_model else None, "hpo.models"),
                               ("hpo.data_code_hash", spec.data.factory, "hpo.data")):
        if target:  # the user's code is part of what the study measured
            tags[tag] = source_hash(load_target(target, spec_path=spec.path, group=group)) or "no source file"
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["hpo.git_commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except OSError:
        return None


def study_settings(spec: Any) -> dict[str, Any]:
    """The parent run's params: what the study was run with."""
    return {
        "dataset": spec.data.label, "model": spec.model, "sampler": spec.search.sampler,
        "n_trials": spec.n_trials, "seed": spec.search.seed, "metric": spec.metric,
        "direction": spec.direction, "pruner": spec.search.pruner, "folds": spec.cv.folds,
        "test_size": spec.data.test_size, "executor": spec.execution.executor,
        "max_concurrent_trials": spec.execution.max_concurrent_trials,
    }


def optuna_storage_for(tracking_uri: str) -> str:
    """Optuna's storage next to the tracking store: ``optuna.db`` beside a sqlite ``mlflow.db``,
    else ``sqlite:///mlruns/optuna.db`` in the working directory."""
    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path("mlruns")
    return f"sqlite:///{folder / 'optuna.db'}"


def _flat(params: dict[str, Any]) -> dict[str, str]:
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
            filter_string=f"tags.`{STUDY_TAG}` = '{self.study}' and tags.`{ROLE_TAG}` = 'study'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def start_study(self, spec: Any, settings: dict[str, Any], tags: dict[str, str], reuse: bool,
                    parent_id: str | None = None) -> str:
        """Open the study's parent run — a new one, or with ``reuse`` the known ``parent_id`` (else the
        one tagged with this study) — and log its spec and settings."""
        run_id = (parent_id or self.find_study_run()) if reuse else None
        if run_id is None:
            run_id = self.out.create_run(self.experiment_id, spec.name, {STUDY_TAG: spec.name, ROLE_TAG: "study", **tags})
            self.out.log_batch(run_id, params=_flat(settings))
            if spec.source:
                # the spec may carry a database URL with a password: never store it
                self.out.log_text(run_id, redact(spec.source), f"spec/{Path(spec.path or 'spec.yaml').name}")
        else:
            self.out.update_run(run_id, status="RUNNING")
            self.out.log_batch(run_id, tags=tags)
        self.parent_id = run_id
        return run_id

    def end_study(self, status: str = "FINISHED") -> None:
        """Close the parent run."""
        if self.parent_id:
            self.out.set_terminated(self.parent_id, status=status)

    # ------------------------------------------------------------------ trials (child runs)

    def start_trial(self, number: int, params: dict[str, Any], sampled: dict[str, Any]) -> str:
        """Create the nested child run of trial ``number`` with all its parameters."""
        run_id = self.out.create_run(
            self.experiment_id, trial_run_name(number, sampled),
            {PARENT_TAG: self.parent_id, STUDY_TAG: self.study, ROLE_TAG: "trial",
             "hpo.trial": str(number), "hpo.state": "running"},
        )
        self.out.log_batch(run_id, params=_flat(params))
        return run_id

    def end_trial(self, run_id: str, result: Any, metric: str) -> None:
        """Final CV metrics, state and duration of a trial; closes its run."""
        ts = int(time.time() * 1000)
        metrics = {"duration_s": result.duration_s, "epochs_trained": result.epochs_trained}
        if result.value is not None:
            metrics[f"cv_{metric}_mean"] = result.value
            metrics[f"cv_{metric}_std"] = result.std
            for k, v in enumerate(result.fold_values):
                metrics[f"fold{k}/best_{metric}"] = v
                metrics[f"fold{k}/best_epoch"] = result.fold_best_epochs[k]
        tags = {"hpo.state": result.state, "hpo.attempts": str(result.attempts)}
        if result.worker:
            tags["hpo.worker"] = result.worker[:500]
            if " cuda " in f" {result.worker} ":
                tags["hpo.gpu"] = result.worker.split(" cuda ", 1)[1][:500]
        if result.reason:
            tags["hpo.reason"] = result.reason[:5000]
        self.out.log_batch(run_id, metrics=[(k, float(v), ts, 0) for k, v in metrics.items()], tags=tags)
        self.out.set_terminated(run_id, status=STATUS[result.state])

    # ------------------------------------------------------------------ artifacts

    def log_file(self, run_id: str, local: Path, artifact_dir: str | None = None) -> None:
        """Upload one local file into ``artifact_dir`` of ``run_id``."""
        self.out.log_artifact(run_id, local, artifact_dir)

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Remove ``path`` from a run's artifacts (used to drop checkpoints that left the top k)."""
        self.out.delete_artifacts(run_id, path)

    def log_checkpoint(self, run_id: str, local: Path) -> None:
        """Upload a checkpoint file into the run's ``checkpoint/`` folder."""
        self.out.log_artifact(run_id, local, CHECKPOINT_DIR)

    def drop_checkpoint(self, run_id: str) -> None:
        """Delete a run's ``checkpoint/`` folder (its trial left the top k)."""
        self.out.delete_artifacts(run_id, CHECKPOINT_DIR)

    def kill_run(self, run_id: str) -> None:
        """Close an interrupted trial's run: KILLED, ``hpo.state`` killed (it re-runs on resume)."""
        self.out.set_terminated(run_id, status="KILLED")
        self.out.set_tag(run_id, "hpo.state", "killed")

    def log_summary(self, metrics: dict[str, float], params: dict[str, Any], tags: dict[str, str]) -> None:
        """Study-level results on the parent run."""
        ts = int(time.time() * 1000)
        existing = self.client.get_run(self.out.real_id(self.parent_id)).data.params
        new_params = {k: v for k, v in _flat(params).items() if k not in existing}
        self.out.log_batch(self.parent_id, metrics=[(k, float(v), ts, 0) for k, v in metrics.items()],
                           params=new_params, tags=tags)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set one tag."""
        self.out.set_tag(run_id, key, value)

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
                f"tags.`{ROLE_TAG}` = 'trial' and tags.`{BEST_TAG}` = 'true'")
        except Exception as exc:  # the tag is cosmetic: the next better trial moves it anyway
            log.warning("could not check which run carries the best tag: %s", exc)
            return
        ids = {r.info.run_id for r in tagged}
        for other in ids - {run_id}:
            self._drop_best(other)
        if run_id not in ids:
            self.out.set_tag(run_id, BEST_TAG, "true")


def curve_log(uri: str, spool: str | Path | None, grace_s: float) -> Outbox:
    """An outbox of its own on the tracking store at ``uri``, for the epoch sink's curves (the Ray sink
    actor opens one in its process; spool file role ``s``)."""
    from mlflow import MlflowClient

    use_wal(uri)
    apply_http_defaults(uri)
    return Outbox(MlflowClient(tracking_uri=uri), spool, grace_s=grace_s, role="s")


def trial_run_name(number: int, sampled: dict[str, Any]) -> str:
    """A child run name a person can read in the runs table, e.g. ``trial-007 lr=3.1e-03 optimizer=adamw``."""
    parts = []
    for k, v in sampled.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.2g}")
        else:
            parts.append(f"{k}={v}")
    return (f"trial-{number:03d} " + " ".join(parts)).strip()[:250]


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` when an HTTP tracking server does not answer ``/health``.

    Asks the way MLflow's own REST client asks (``mlflow.utils.rest_utils.http_request`` with the
    host credentials MLflow builds for the URI), so a server MLflow can use passes: credentials in
    the URL (``http://user:password@host``, which ``requests`` sends as basic auth),
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``, and
    MLflow's TLS settings. Messages never show the password.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    shown = redact(uri)
    try:
        # one try, no backoff: this is a quick look before a study starts, not a write that must land
        resp = http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, backoff_factor=0,
                            timeout=timeout, raise_on_status=False)
    except Exception as exc:
        text = str(exc).strip()
        # MLflow wraps requests' error in "API request to URL failed with exception ...": keep the OS's reason
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
        reason = redact(errno[0] if errno else f"timed out after {timeout:g}s" if "timed out" in text.lower()
                        else text.splitlines()[0] if text else type(exc).__name__)
        raise TrackingError(f"the tracking server {shown} is not reachable ({reason}); start it "
                            "(mlflow server ...) or pass another --tracking-uri") from None
    if resp.status_code in (401, 403):
        raise TrackingError(f"the tracking server {shown} refused the credentials (HTTP {resp.status_code}); put "
                            "them in the URI (http://USER:PASSWORD@host) or set MLFLOW_TRACKING_USERNAME and "
                            "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if resp.status_code != 200:
        raise TrackingError(f"the tracking server {shown} is not reachable (HTTP {resp.status_code} from /health); "
                            "check that it is an MLflow tracking server, or pass another --tracking-uri")


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
