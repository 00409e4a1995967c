"""Webhook notifications of a study's events (``tracking.notify``): finished, failed, interrupted, new_best.

Each event the spec lists is posted as a small JSON document (:func:`payload`) to the URL held in
the environment variable ``tracking.notify.url_env`` — the URL itself is never in the spec, params,
tags or logs (a Slack or Teams webhook URL is a credential). Posts go out in order from one
background thread, so a slow endpoint never holds up a trial; :meth:`Notifier.close` waits for
them (at most ``timeout`` each). A post that fails is a warning, never a failed study.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.request
from typing import Any

from hpo.redact import redact

log = logging.getLogger("hpo")


def ui_link(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI's page of ``run_id`` when the tracking store is a server (its address is the UI's)."""
    if not tracking_uri.startswith(("http://", "https://")) or not run_id:
        return None
    base = redact(tracking_uri).rstrip("/")
    if "***" in base:  # credentials in the URI: a link would carry them (or a useless mask)
        base = base.split("://", 1)[0] + "://" + base.split("@", 1)[-1]
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def payload(event: str, *, study: str, metric: str, direction: str, best_value: float | None,
            best_trial: int | None, counts: dict[str, int], parent_run_id: str, experiment_id: str,
            tracking_uri: str, **extra: Any) -> dict[str, Any]:
    """The JSON document of one event: what a chat message or a dashboard needs, and the run to open."""
    doc = {"study": study, "event": event, "metric": metric, "direction": direction, "best_value": best_value,
           "best_trial": best_trial, "trials": dict(counts), "parent_run_id": parent_run_id,
           "experiment_id": experiment_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    link = ui_link(tracking_uri, experiment_id, parent_run_id)
    if link:
        doc["mlflow_url"] = link
    doc.update(extra)
    doc["text"] = _text(doc)
    return doc


def _text(doc: dict[str, Any]) -> str:
    """One line for chat tools that show a ``text`` field (Slack, Mattermost, Teams' incoming webhooks)."""
    best = "" if doc["best_value"] is None else f", best {doc['metric']} {doc['best_value']:.4g} (trial {doc['best_trial']})"
    trials = ", ".join(f"{v} {k}" for k, v in doc["trials"].items())
    reason = f": {doc['reason']}" if doc.get("reason") else ""
    return f"hpo study {doc['study']} {doc['event']}{reason}{best}; trials: {trials or 'none'}"


class Notifier:
    """Posts the events ``on`` lists to the URL in environment variable ``url_env``."""

    def __init__(self, url_env: str, on: list[str], timeout: float = 5.0) -> None:
        self.url_env, self.on, self.timeout = url_env, set(on), timeout
        self.url = os.environ.get(url_env, "").strip() or None
        if self.url is None:
            log.warning("tracking.notify: environment variable %s is not set, so no notifications are posted; "
                        "export %s=https://... to receive them", url_env, url_env)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def wants(self, event: str) -> bool:
        """Whether ``event`` is one to post (listed, and a URL to post it to)."""
        return self.url is not None and event in self.on

    def post(self, doc: dict[str, Any]) -> None:
        """Queue ``doc`` (see :func:`payload`) for posting, when its event is one to post."""
        if not self.wants(doc["event"]):
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hpo-notify", daemon=True)
            self._thread.start()
        self._queue.put(doc)

    def _run(self) -> None:
        while (doc := self._queue.get()) is not None:
            self._send(doc)

    def _send(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, default=str).encode()
        request = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310 - the user's webhook
                                         headers={"Content-Type": "application/json", "User-Agent": "hpo"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read(1024)
            self.sent += 1
        except Exception as exc:  # noqa: BLE001 - a notification never fails a study
            self.failed += 1
            reason = str(getattr(exc, "reason", "") or exc).replace(self.url, f"${self.url_env}")
            log.warning("tracking.notify: could not post the %s event to $%s (%s: %s); the study goes on",
                        doc["event"], self.url_env, type(exc).__name__, reason[:300])

    def close(self) -> None:
        """Send what is queued (each post at most ``timeout`` s), then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
