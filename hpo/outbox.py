"""MLflow writes that outlive a tracking-server outage.

Every write a study makes to MLflow goes through an :class:`Outbox`. While the tracking
server answers, a write goes straight out. When it does not (connection refused, timeout,
HTTP 5xx), that write and every later one wait, in order, in a spool on disk
(``<store folder>/.outbox/<study>/``); a run created meanwhile gets a placeholder id
(``pending-…``), and the outbox retries every ``retry_s`` seconds. Once the server is
back the queue drains in order and placeholders are swapped for the real run ids. If the
server stays away longer than ``grace_s`` seconds, :attr:`Outbox.gave_up` turns true and
the study stops cleanly; Optuna's storage holds every finished trial and the spool every
write, and :func:`sync` (``hpo sync NAME``, also the first thing ``hpo run --resume``
does) sends them once the server answers again.

The spool is plain JSON lines (one write each) plus copies of files waiting to be uploaded;
nothing in it is executable. Each process writes its own ``ops-<role>-<pid>.jsonl``.

The spool records the store its writes are for (``target.json``, see :mod:`hpo.spool`): run
and experiment ids only mean something in that store, so ``hpo sync`` and resume send the
writes there and refuse another URI. A write the store refuses for another reason than an
outage (or one for a run whose creation failed) is never dropped: it moves to
``failed-<role>-<pid>.jsonl`` with the reason, and :func:`sync` raises :class:`SyncError`
while such files are there.

The spool-side helpers (:func:`spool_dir`, :func:`read_ids`, :func:`sync`) live in
:mod:`hpo._outbox_spool`, the HTTP side (:data:`HTTP_ENV`, :func:`is_outage`) in
:mod:`hpo._outbox_http`; both are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hpo._outbox_http import HTTP_ENV, apply_http_defaults, is_outage  # noqa: F401 (re-exported)
from hpo._outbox_spool import IDS_FILE, Synced, read_ids, spool_dir, sync, write_ids  # noqa: F401 (re-exported)
from hpo.redact import redact
from hpo.spool import SyncError, failed_message, failed_writes, record_target, waiting  # noqa: F401 (re-exported)

log = logging.getLogger("hpo")

PENDING = "pending-"
DEFAULT_GRACE_S = 300.0
DEFAULT_RETRY_S = 5.0
MAX_BATCH_METRICS = 1000  # MLflow's limit on entities (metrics + params + tags) per log_batch call

def _has_pending(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PENDING)


def _placeholders(op: dict[str, Any]) -> list[str]:
    """The unresolved run ids a write needs: its run, and a new run's parent."""
    refs = [op.get("run"), op["tags"].get("mlflow.parentRunId") if op["op"] == "create_run" else None]
    return [r for r in refs if _has_pending(r)]


class Outbox:
    """Sends MLflow writes in order, holding them on disk while the server is unreachable.

    ``client``: an :class:`mlflow.MlflowClient`; ``spool``: the folder for waiting writes
    (``None``: kept in memory only); ``role``: names this process's spool file.
    """

    def __init__(self, client: Any, spool: Path | None, *, grace_s: float = DEFAULT_GRACE_S,
                 retry_s: float = DEFAULT_RETRY_S, role: str = "d", file: Path | None = None,
                 target: str | None = None) -> None:
        self.client = client
        # the store these writes are for, recorded in the spool with the first write that waits
        self.target = target or getattr(client, "tracking_uri", None)
        self._target_recorded = False
        self.spool = Path(spool) if spool is not None else None
        self.grace_s, self.retry_s = grace_s, retry_s
        self._ops: list[dict[str, Any]] = []
        self._lock = threading.RLock()
        self._last_try = 0.0
        self.down_since: float | None = None
        self.last_error = ""
        self.sent_late = 0  # writes that waited and then went out
        self.ids: dict[str, str] = read_ids(self.spool)
        self.failed: list[dict[str, Any]] = []  # writes the store refused in this process (kept in the spool)
        self._awaited: set[str] = set()  # placeholders whose create_run was seen waiting in a spool file
        # placeholder -> why its create_run failed (here or in an earlier sync): its writes cannot be sent
        self._dead: dict[str, str] = {op["id"]: op.get("error", "") for op in failed_writes(self.spool)
                                      if op.get("op") == "create_run" and "id" in op}
        self._file = self.spool / f"ops-{role}-{os.getpid()}.jsonl" if self.spool is not None else None
        if file is not None:  # take over the writes another (stopped) process left in its spool file
            self._file = Path(file)
            self._ops = [json.loads(line) for line in self._file.read_text(encoding="utf-8").splitlines()
                         if line.strip()]

    # ------------------------------------------------------------------ state

    @property
    def pending(self) -> int:
        """Writes waiting for the server."""
        return len(self._ops)

    @property
    def gave_up(self) -> bool:
        """The server has been unreachable for longer than ``grace_s``."""
        return self.down_since is not None and time.monotonic() - self.down_since > self.grace_s

    def real_id(self, run_id: str | None) -> str | None:
        """The MLflow run id behind a placeholder (the id itself when it is real or still pending)."""
        if run_id and run_id.startswith(PENDING) and run_id not in self.ids:
            self.ids.update(read_ids(self.spool))  # another process (the Ray sink) may have resolved it
        return self.ids.get(run_id, run_id) if run_id else run_id

    # ------------------------------------------------------------------ writes

    def create_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """Create a run; returns its id, or a placeholder while the server is away."""
        return self._submit({"op": "create_run", "experiment_id": experiment_id, "run_name": run_name,
                             "tags": tags, "id": f"{PENDING}{uuid.uuid4().hex}"})

    def log_batch(self, run_id: str, metrics: list[tuple[str, float, int, int]] = (),
                  params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        """Metrics as ``(key, value, timestamp_ms, step)``, params and tags as mappings."""
        self._submit({"op": "log_batch", "run": run_id, "metrics": [list(m) for m in metrics],
                      "params": dict(params or {}), "tags": dict(tags or {})})

    def log_batches(self, run_id: str, metrics: list[tuple[str, float, int, int]],
                    tags: dict[str, str] | None = None) -> None:
        """``metrics`` (and ``tags``, with the last of them) in as few ``log_batch`` calls as MLflow allows."""
        room = MAX_BATCH_METRICS - len(tags or {})
        while len(metrics) > room:
            self.log_batch(run_id, metrics=metrics[:room])
            metrics = metrics[room:]
        if metrics or tags:
            self.log_batch(run_id, metrics=metrics, tags=tags)

    def set_terminated(self, run_id: str, status: str) -> None:
        """Close a run with ``status`` (FINISHED, FAILED, KILLED)."""
        self._submit({"op": "set_terminated", "run": run_id, "status": status})

    def update_run(self, run_id: str, status: str) -> None:
        """Set a run's status (e.g. RUNNING again on resume)."""
        self._submit({"op": "update_run", "run": run_id, "status": status})

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set one tag."""
        self._submit({"op": "set_tag", "run": run_id, "key": key, "value": value})

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove one tag."""
        self._submit({"op": "delete_tag", "run": run_id, "key": key})

    def log_artifact(self, run_id: str, local: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file; while the server is away a copy waits in the spool (the original may go)."""
        self._submit({"op": "log_artifact", "run": run_id, "local": str(local), "path": artifact_path})

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file``."""
        self._submit({"op": "log_text", "run": run_id, "text": text, "file": artifact_file})

    def delete_artifacts(self, run_id: str, path: str) -> None:
        """Remove ``path`` from a run's artifacts."""
        self._submit({"op": "delete_artifacts", "run": run_id, "path": path})

    # ------------------------------------------------------------------ machinery

    def _resolve(self, op: dict[str, Any]) -> dict[str, Any]:
        if _has_pending(op.get("run")):
            op = {**op, "run": self.real_id(op["run"])}
        if op["op"] == "create_run" and _has_pending(op["tags"].get("mlflow.parentRunId")):
            op = {**op, "tags": {**op["tags"], "mlflow.parentRunId": self.real_id(op["tags"]["mlflow.parentRunId"])}}
        return op

    @staticmethod
    def _blocked(op: dict[str, Any]) -> bool:
        return _has_pending(op.get("run")) or (op["op"] == "create_run"
                                                and _has_pending(op["tags"].get("mlflow.parentRunId")))

    def _submit(self, op: dict[str, Any]) -> Any:
        op = self._resolve(op)
        with self._lock:
            queue = bool(self._ops) or self._blocked(op)
            orphan = self._blocked(op) and self._orphaned(op)
        if orphan:  # waiting would hold back every later write for a run that will never exist
            self._fail(op, orphan)
            return op.get("id")
        if not queue:
            try:
                return self._execute(op, fresh=True)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self.went_down(exc)
        with self._lock:
            self._enqueue(op)
        return op.get("id")

    def went_down(self, exc: BaseException) -> None:
        """Note that the server stopped answering (``exc`` says how); later writes wait."""
        with self._lock:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self._last_try = self.down_since
                log.warning("the tracking server does not answer (%s); writes wait in %s and are retried every "
                            "%.0fs (the study stops after %.0fs without it)", _short(exc), self.spool or "memory",
                            self.retry_s, self.grace_s)
            self.last_error = _short(exc)

    def _enqueue(self, op: dict[str, Any]) -> None:
        if op["op"] == "log_artifact" and self.spool is not None:
            keep = self.spool / "files" / uuid.uuid4().hex / Path(op["local"]).name
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(op["local"], keep)
            op = {**op, "local": str(keep)}
        self._ops.append(op)
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            if not self._target_recorded and self.target:
                record_target(self._file.parent, self.target)
                self._target_recorded = True
            with open(self._file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(op) + "\n")

    def _fail(self, op: dict[str, Any], why: str) -> None:
        """Keep a write the store will not take in the spool's failed file, with the reason."""
        op = {**op, "error": why}
        self.failed.append(op)
        if op["op"] == "create_run":
            self._dead[op["id"]] = why
        where = "memory"
        if self._file is not None:
            failed = self._file.with_name(self._file.name.replace("ops-", "failed-", 1))
            with open(failed, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(op) + "\n")
            where = str(failed)
        log.warning("a tracking write could not be sent and is kept in %s: %s (%s)", where, op["op"], why)

    def _orphaned(self, op: dict[str, Any]) -> str | None:
        """Why a write for a placeholder can never be sent: its create failed, or no write that waits
        (here or in another process's spool file) creates it and none did (e.g. it was given up)."""
        dead = self._dead_parent(op)
        if dead is not None:
            return f"its run was never created ({dead})"
        for ref in _placeholders(op):
            if ref in self._awaited or any(o["op"] == "create_run" and o["id"] == ref for o in self._ops):
                continue
            if self.spool is not None and any(f'"id": "{ref}"' in f.read_text(encoding="utf-8")
                                              for f in self.spool.glob("ops-*.jsonl")):
                self._awaited.add(ref)
                continue
            # looked up after the files: a create is recorded in ids.json before it leaves its file
            if ref in self.ids or ref in read_ids(self.spool):
                continue
            return "its run was never created: no waiting write creates it"
        return None

    def _dead_parent(self, op: dict[str, Any]) -> str | None:
        """Why the run ``op`` writes to was never created, when its create_run failed."""
        for ref in _placeholders(op):
            if ref in self._dead:
                return self._dead[ref]
        return None

    def _execute(self, op: dict[str, Any], fresh: bool = False) -> Any:
        from mlflow.entities import Metric, Param, RunTag

        c, kind = self.client, op["op"]
        if kind == "create_run":
            run_id = c.create_run(op["experiment_id"], run_name=op["run_name"], tags=op["tags"]).info.run_id
            if not fresh:
                self.ids[op["id"]] = run_id
                write_ids(self.spool, self.ids)
            return run_id
        run = op["run"]
        if kind == "log_batch":
            c.log_batch(run, metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in op["metrics"]],
                        params=[Param(k, v) for k, v in op["params"].items()],
                        tags=[RunTag(k, v) for k, v in op["tags"].items()])
        elif kind == "set_terminated":
            c.set_terminated(run, status=op["status"])
        elif kind == "update_run":
            c.update_run(run, status=op["status"])
        elif kind == "set_tag":
            c.set_tag(run, op["key"], op["value"])
        elif kind == "delete_tag":
            try:
                c.delete_tag(run, op["key"])
            except Exception as exc:  # the tag is gone already (a replayed or repeated tag move): done
                if "No tag with name" not in str(exc):
                    raise
        elif kind == "log_artifact":
            c.log_artifact(run, op["local"], op["path"])
        elif kind == "log_text":
            c.log_text(run, op["text"], op["file"])
        elif kind == "delete_artifacts":
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            uri = c.get_run(run).info.artifact_uri  # mlflow-artifacts:/ URIs resolve against the server
            get_artifact_repository(uri, tracking_uri=c.tracking_uri).delete_artifacts(op["path"])
        else:
            raise ValueError(f"unknown tracking write {kind!r} in the spool")
        return None

    def flush(self, force: bool = False, final: bool = False) -> bool:
        """Send waiting writes in order if ``retry_s`` has passed (or ``force``); True when none wait.

        A write the store refuses (not an outage), or one for a run whose create_run failed, moves
        to the spool's failed file (see :meth:`_fail`). ``final``: a write for a run whose creation
        is nowhere to be sent any more moves there too (used by :func:`sync` after the writes of
        every process were replayed); otherwise it waits for the process that creates the run."""
        if not self._ops:
            return True
        if not force and time.monotonic() - self._last_try < self.retry_s:
            return False
        with self._lock:
            self._last_try = time.monotonic()
            sent = 0
            while self._ops:
                op = self._resolve(self._ops[0])
                why = None
                if self._blocked(op):
                    dead = self._dead_parent(op)
                    if dead is not None:
                        why = f"its run was never created ({dead})"
                    elif final:
                        why = "its run was never created: no waiting write creates it"
                    else:  # its run is created by a write still waiting elsewhere (another process)
                        break
                else:
                    try:
                        self._execute(op)
                    except Exception as exc:
                        if is_outage(exc):
                            self.last_error = _short(exc)
                            break
                        why = f"{type(exc).__name__}: {redact(_short(exc))}"
                self._ops.pop(0)
                if why is not None:
                    self._fail(op, why)  # a file it uploads stays in the spool with it
                    continue
                sent += 1
                if op["op"] == "log_artifact" and self.spool is not None and self.spool in Path(op["local"]).parents:
                    shutil.rmtree(Path(op["local"]).parent, ignore_errors=True)
            self.sent_late += sent
            self._rewrite()
            if not self._ops:
                if self.down_since is not None:
                    log.warning("the tracking server is back: %d waiting writes sent", self.sent_late)
                self.down_since = None
                return True
            return False

    def drain(self, timeout: float) -> bool:
        """Retry until nothing waits or ``timeout`` seconds pass; True when nothing waits."""
        deadline = time.monotonic() + timeout
        while not self.flush(force=True):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self.retry_s, max(0.0, deadline - time.monotonic())))
        return True

    def _rewrite(self) -> None:
        if self._file is None:
            return
        if not self._ops:
            self._file.unlink(missing_ok=True)
            return
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in self._ops), encoding="utf-8")
        os.replace(tmp, self._file)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
