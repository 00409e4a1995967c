"""The embedded default store: MLflow's and Optuna's sqlite files, made fast and safe to share.

Three things, all for sqlite URIs only (a tracking server or PostgreSQL is left alone):

- :func:`store_lock`: an exclusive file lock on the store's folder, so two ``hpo run``
  started at once on a new store do not race through schema migrations or both create
  the same study.
- :func:`use_wal`: every connection hpo (MLflow, Optuna, SQLAlchemy underneath) opens to
  a registered database file switches to ``journal_mode=WAL, synchronous=NORMAL``. With
  sqlite's default rollback journal every commit is an fsync (7–16 ms on the benchmark
  machine; a trial makes ~32 commits); in WAL mode commits are appends and readers no
  longer block the writer. ``synchronous=NORMAL`` in WAL mode survives a crash of the
  process; only a power loss can drop the last transactions, never corrupt the file.
- :func:`seed_mlflow_db`: a new MLflow database is a copy of an empty one made once per
  MLflow version (``~/.cache/hpo/``), instead of running MLflow's ~50 schema migrations
  (2–3 s) for every new store. The copy is MLflow's own output: the template is created
  by :class:`mlflow.store.tracking.sqlalchemy_store.SqlAlchemyStore` itself; its default
  experiment is removed so MLflow recreates it with the right artifact location.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("hpo")

_WAL_FILES: set[str] = set()
_LISTENING = False


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or ``None`` for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a sqlite store's folder (no-op for servers)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".hpo.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _on_connect(dbapi_connection, _record) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    try:
        row = dbapi_connection.execute("PRAGMA database_list").fetchone()
        if row and row[2] and os.path.realpath(row[2]) in _WAL_FILES:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as exc:  # e.g. a file on a filesystem without shared memory: stay in default mode
        log.debug("sqlite: could not switch %s to WAL: %s", row[2] if row else "?", exc)


def use_wal(uri: str) -> None:
    """Open every later connection to the sqlite database of ``uri`` in WAL mode (no-op for other URIs)."""
    global _LISTENING
    db = sqlite_path(uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    _WAL_FILES.add(os.path.realpath(db))
    if not _LISTENING:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "connect", _on_connect)
        _LISTENING = True


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpo"


def _mlflow_template() -> Path | None:
    """An empty, fully migrated MLflow database for this MLflow version (made on first use)."""
    import mlflow

    template = _cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"
    if template.exists():
        return template
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            path = Path(tmp) / "empty.db"
            store = SqlAlchemyStore(f"sqlite:///{path}", str(Path(tmp) / "artifacts"))
            store.engine.dispose()
            with sqlite3.connect(path) as con:  # MLflow recreates it where the copy is used
                con.execute("DELETE FROM experiments WHERE experiment_id = 0")
            con.close()
            os.replace(path, template)  # atomic: a concurrent maker's copy is just as good
    except Exception as exc:  # a read-only home, say: MLflow migrates the new store itself
        log.debug("sqlite: no MLflow template (%s)", exc)
        return None
    return template


def seed_mlflow_db(uri: str) -> None:
    """Create the sqlite database of a new MLflow store from the template (no-op if it exists).

    Call it under :func:`store_lock`; other URIs are left alone.
    """
    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    template = _mlflow_template()
    if template is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    partial = db.with_name(db.name + ".seeding")
    shutil.copyfile(template, partial)
    os.replace(partial, db)
