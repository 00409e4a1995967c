"""How :mod:`hpo.outbox` treats a tracking server: fail-fast HTTP settings for MLflow's client, and
which exceptions mean the server is unreachable or failing (an outage: the write waits) rather
than refusing a request. Part of :mod:`hpo.outbox`, which re-exports these names.
"""

from __future__ import annotations

import os
import re

# MLflow's REST client retries a failed request 7 times with exponential back-off (minutes);
# the outbox does its own retrying, so a single request should fail fast.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server is unreachable or failing (not a bad request)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
    except ImportError:  # pragma: no cover - requests comes with mlflow
        pass
    msg = str(exc)
    if msg.startswith("API request to") and ("failed with exception" in msg or "timeout exception" in msg):
        return True
    return bool(re.search(r"\b(502|503|504) (Server Error|error|!=)|error code (502|503|504)|"
                          r"too many (502|503|504) error responses", msg))


def apply_http_defaults(uri: str) -> None:
    """Fail-fast HTTP settings for MLflow's client when ``uri`` is a server (user settings win)."""
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_ENV.items():
            os.environ.setdefault(key, value)
