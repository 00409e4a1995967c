"""The spool-side helpers of :mod:`hpo.outbox`: where a study's spool folder is, its placeholder ->
run id map (``ids.json``), and :func:`sync`, which sends every write that stopped processes left
in a spool. Part of :mod:`hpo.outbox`, which re-exports these names; the rest of the folder's
layout (the store its writes are for, the waiting and the refused writes) is :mod:`hpo.spool`'s.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from hpo.spool import SyncError, failed_message, failed_writes, waiting
from hpo.sqlite_store import sqlite_path

IDS_FILE = "ids.json"


def spool_dir(tracking_uri: str, study: str) -> Path:
    """Where the study's waiting writes are kept: beside a sqlite store, else under ``./mlruns``."""
    db = sqlite_path(tracking_uri)
    base = db.parent if db is not None else Path("mlruns")
    return (base / ".outbox" / re.sub(r"[^\w.-]", "_", study)).absolute()


def read_ids(spool: Path | None) -> dict[str, str]:
    """The placeholder -> run id map kept in a spool folder."""
    if spool is None or not (spool / IDS_FILE).exists():
        return {}
    try:
        return dict(json.loads((spool / IDS_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def write_ids(spool: Path | None, ids: dict[str, str]) -> None:
    """Merge ``ids`` into the spool folder's placeholder -> run id map (replaced atomically)."""
    if spool is None:
        return
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f"{IDS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({**read_ids(spool), **ids}), encoding="utf-8")
    os.replace(tmp, spool / IDS_FILE)


class Synced(NamedTuple):
    """What :func:`sync` did: writes ``sent``, writes still ``waiting`` for an unreachable server."""

    sent: int
    waiting: int


def sync(client: Any, spool: Path) -> Synced:
    """Send every write waiting in ``spool`` (left by stopped studies), oldest process first.

    Returns ``(sent, still_waiting)``; ``still_waiting > 0`` means the server is still away.
    Each spool file is removed once it is fully sent. Raises :class:`SyncError` when nothing
    waits any more but some writes could not be sent (now or by an earlier sync): they are kept
    in the spool's ``failed-*.jsonl`` with the reason; a caller must never report success then.
    Call :func:`hpo.spool.resolve_target` first: ``client`` must talk to the spool's store.
    """
    from hpo.outbox import Outbox  # here: hpo.outbox imports this module

    sent = 0
    files = sorted(spool.glob("ops-*.jsonl"), key=lambda f: (not f.name.startswith("ops-d-"), f.stat().st_mtime)) \
        if spool.is_dir() else []
    for f in files:
        ob = Outbox(client, spool, grace_s=0.0, file=f)
        done = ob.flush(force=True, final=True)
        sent += ob.sent_late
        if not done:
            return Synced(sent, waiting(spool))
    files_dir = spool / "files"
    if files_dir.is_dir() and not any(files_dir.iterdir()):
        files_dir.rmdir()
    failed = failed_writes(spool)
    if failed:
        raise SyncError(failed_message(failed, spool, getattr(client, "tracking_uri", "") or "", sent))
    return Synced(sent, 0)
