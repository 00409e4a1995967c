"""The stores behind a study: Optuna's storage beside MLflow's, a tracking server's health check,
and the epoch sink's own outbox."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from hpo.errors import TrackingError
from hpo.outbox import Outbox, apply_http_defaults
from hpo.redact import redact
from hpo.sqlite_store import sqlite_path, use_wal


def optuna_storage_for(tracking_uri: str) -> str:
    """Optuna's storage next to the tracking store, in the folder of a sqlite ``mlflow.db`` (else ``mlruns``
    in the working directory): ``optuna.db``, or the Optuna journal ``optuna.journal`` when only that is
    there (a study ran with ``tracking.storage: mlruns/optuna.journal``; :mod:`hpo.journal_store`)."""
    db = sqlite_path(tracking_uri)
    folder = db.parent if db is not None else Path("mlruns")
    journal = folder / "optuna.journal"
    if journal.is_file() and not (folder / "optuna.db").exists():
        return str(journal)
    return f"sqlite:///{folder / 'optuna.db'}"


def optuna_storages_beside(tracking_uri: str) -> list[str]:
    """Every Optuna store next to the tracking store, the default (:func:`optuna_storage_for`) first: ``optuna.db``
    and the journal ``optuna.journal`` when both are there (readers look for a study in each)."""
    first = optuna_storage_for(tracking_uri)
    db = sqlite_path(tracking_uri)
    journal = (db.parent if db is not None else Path("mlruns")) / "optuna.journal"
    return [first, str(journal)] if journal.is_file() and first != str(journal) else [first]


def curve_log(uri: str, spool: str | Path | None, grace_s: float) -> Outbox:
    """An outbox of its own on the tracking store at ``uri``, for the epoch sink's curves (the Ray sink
    actor opens one in its process; spool file role ``s``)."""
    from mlflow import MlflowClient

    use_wal(uri)
    apply_http_defaults(uri)
    return Outbox(MlflowClient(tracking_uri=uri), spool, grace_s=grace_s, role="s")


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
