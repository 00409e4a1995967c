"""The embedded default store: MLflow's and Optuna's sqlite files, made fast and safe to share.

Four things, all for sqlite URIs only (a tracking server or PostgreSQL is left alone):

- :func:`check_store`: a writer refuses a store it may not write, and everyone refuses a
  damaged one (an empty file, a wrong header, a truncated file, a failed ``quick_check``, missing
  tables), with :class:`StoreError` naming the file, before anything is written;
  :func:`store_lock`, :func:`use_wal` and the tracker call it. :func:`read_only_uri` is how
  readers (``hpo show``, ``compare``) open a store: read-only, creating no file beside it.
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
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from hpo.errors import TrackingError
from hpo.journal_store import journal_path

log = logging.getLogger("hpo")

_WAL_FILES: set[str] = set()
_LISTENING = False
# (file, mtime_ns, size, tables) already found whole: a store is checked once per change, not per opener
_WHOLE: set[tuple[str, int, int, tuple[str, ...]]] = set()

SQLITE_HEADER = b"SQLite format 3\x00"
#: tables a store must have for a reader to trust it (a writer creates what is missing in a new file)
TABLES = {"mlflow": ("experiments", "runs", "alembic_version"),
          "optuna": ("studies", "trials", "version_info", "alembic_version")}
#: quick_check reads every page (~3 ms per MB); bigger files get the header, size and table checks only
QUICK_CHECK_MAX_BYTES = 256 * 2**20


class StoreError(TrackingError):
    """A sqlite store hpo cannot use: damaged, missing where one is expected, or not writable (exit 2)."""


def absolute(uri: str, *, resolve: bool = False) -> str:
    """``uri`` with a relative sqlite path made absolute against the current folder (other URIs as they are);
    with ``resolve``, an absolute one is resolved too (symlinks), so two spellings of one file compare equal.

    What a relative ``sqlite:///mlruns/mlflow.db`` means is fixed when a study starts: MLflow keeps one
    SQLAlchemy engine per URI string for the life of the process, so two studies started from different
    folders under the same relative URI would otherwise share the first one's pooled connections (and
    write into the first folder's database, or fail once it is gone). An Optuna journal file's path
    (:mod:`hpo.journal_store`) is made absolute the same way."""
    journal = journal_path(uri)
    if journal is not None:
        return str(journal.resolve() if resolve else journal.absolute())
    if not uri.startswith("sqlite:///") or (uri.startswith("sqlite:////") and not resolve):
        return uri
    path, sep, query = uri[len("sqlite:///"):].partition("?")
    if not path or path == ":memory:":
        return uri
    return f"sqlite:///{Path(path).resolve()}{sep}{query}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or ``None`` for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def _sidecars(db: Path) -> list[Path]:
    return [db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal")]


def _file_uri(db: Path) -> str:
    """A sqlite URI filename that opens ``db`` read-only and creates nothing beside it.

    ``immutable=1`` (no locks, no ``-shm``) where no ``-wal`` / ``-journal`` shows a writer at work,
    so a folder the user may not write is no obstacle; else ``mode=ro``, which reads the writer's
    journal (sqlite needs the ``-shm`` then, and makes it if it can).
    """
    live = any(p.exists() for p in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-journal")))
    return f"file:{quote(str(db.absolute()), safe='/')}?{'mode=ro' if live else 'immutable=1'}"


def read_only_uri(uri: str) -> str:
    """The SQLAlchemy URL that opens the sqlite database of ``uri`` read-only (other URIs: ``uri`` itself).

    For readers (``hpo show``, ``hpo compare``): nothing can be written, migrated or created
    through it, and it works on a store the user may only read. MLflow's and Optuna's
    SQLAlchemy engines both take it.
    """
    db = sqlite_path(uri)
    if db is None:
        return uri
    name, query = _file_uri(db).split("?")
    # SQLAlchemy decodes the path once and sqlite once more: a '#', '?' or '%' in it stays itself
    return f"sqlite:///{quote(name, safe='/:')}?{query}&uri=true"


def _damage(db: Path, tables: tuple[str, ...]) -> str | None:
    """Why the sqlite file ``db`` cannot be trusted, or None when it looks whole."""
    st = db.stat()
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_size == 0:
        return "the file is empty"
    key = (os.path.realpath(db), st.st_mtime_ns, st.st_size, tables)
    if key in _WHOLE:
        return None
    with open(db, "rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(SQLITE_HEADER):
        return "it is not an SQLite database: its header is wrong"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    wal = db.with_name(db.name + "-wal")
    # the header's page count is valid when its change counter matches (sqlite >= 3.7); a live WAL
    # may hold pages the main file has not got yet
    if (pages and head[24:28] == head[92:96] and not (wal.exists() and wal.stat().st_size)
            and st.st_size < pages * page_size):
        return f"it is truncated: {st.st_size} of {pages * page_size} bytes"
    try:
        con = sqlite3.connect(_file_uri(db), uri=True)
        try:
            if st.st_size <= QUICK_CHECK_MAX_BYTES:
                rows = [r[0] for r in con.execute("PRAGMA quick_check(3)").fetchall()]
                if rows != ["ok"]:
                    return "quick_check: " + "; ".join(rows)
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if "unable to open" in str(exc) and not os.access(db.parent, os.W_OK):
            # not damage: sqlite cannot make the -shm it needs to read a live WAL here
            raise StoreError(f"cannot open the store at {db} read-only: it holds changes in {wal.name} that sqlite "
                             f"reads only with a {db.name}-shm beside it, and {db.parent} is not writable; ask "
                             "whoever may write that folder to open it once (hpo show NAME), or copy the folder "
                             "somewhere writable") from None
        return f"sqlite: {exc}"
    missing = [t for t in tables if t not in names]
    if missing:
        return f"it has no {', '.join(missing)} table{'s' if len(missing) > 1 else ''}"
    _WHOLE.add(key)
    return None


def _check_writable(db: Path) -> None:
    """StoreError unless this process may create or write ``db``, its lock and its journals."""
    db = db.absolute()  # so a message about the default relative store does not name "."
    folder = db.parent
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folder is yet to be made: its nearest existing ancestor must be writable
    where = "--tracking-uri (or the spec's tracking.uri / tracking.storage)"
    if not probe.is_dir():
        raise StoreError(f"cannot make the store folder {folder}: {probe} is a file, not a folder; "
                         f"pass a {where} naming a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        made = "" if probe == folder else f" (to make {folder})"
        raise StoreError(f"cannot write to the store folder {probe}{made}: permission denied. hpo keeps {db.name} "
                         f"and its lock and journal files there; make it writable (chmod u+w {probe}) or pass a "
                         f"{where} naming a folder you can write")
    for f in (db, *_sidecars(db), db.with_name(db.name + ".lock"), folder / ".hpo.lock"):
        if f.exists() and not os.access(f, os.W_OK):
            raise StoreError(f"the store file {f} is read-only: permission denied. Make it writable "
                             f"(chmod u+w {f}) or pass a {where} naming a store you can write")


def check_writable(uri: str) -> None:
    """StoreError unless this process may write the sqlite store of ``uri`` (no-op for other URIs).

    The cheap half of :func:`check_store`, safe to call before taking :func:`store_lock` (a
    damage check there could catch another process making the store).
    """
    db = sqlite_path(uri) or journal_path(uri)
    if db is not None:
        _check_writable(db)


def damaged_message(db: Path, why: str) -> str:
    """The one message for a damaged store file: what is wrong and how to get back."""
    extra = ""
    if why == "the file is empty":
        extra = ", or delete it if nothing was stored in it yet"
    elif why.startswith(("it is truncated", "quick_check", "sqlite:")):  # pages are there to be read
        extra = f" (sqlite3 {db} .recover | sqlite3 NEW.db salvages what is left)"
    return f"the store at {db} is damaged ({why}); restore it from a backup{extra}"


def check_store(uri: str, *, write: bool, kind: str | None = None) -> None:
    """Refuse a sqlite store hpo must not use, before anything reads or writes it (no-op for other URIs).

    ``write``: this process will write it, so its folder (or the nearest existing ancestor of a folder
    yet to be made), the database file, its journals and the lock must be writable; a missing file
    is fine (it will be created). A reader (``write=False``) needs the file to exist. Both refuse
    a damaged file: empty, not SQLite, truncated, failing ``PRAGMA quick_check``, or (``kind``
    ``"mlflow"`` / ``"optuna"``, readers only) without that library's tables. Creates nothing.

    Raises :class:`StoreError` with the path and what to do. An Optuna journal file gets the same
    writable and exists checks; a damaged one is refused when it is opened (:func:`hpo.journal_store.open_journal`).
    """
    journal = journal_path(uri)
    if journal is not None:
        if write:
            _check_writable(journal)
        elif not journal.is_file():
            raise StoreError(f"no Optuna journal at {journal}: run a study with `hpo run SPEC`, or give the "
                             "tracking.storage the study ran with")
        return
    db = sqlite_path(uri)
    if db is None:
        return
    if write:
        _check_writable(db)
    if not (db.exists() or db.is_symlink()):
        if not write:
            raise StoreError(f"no store at {db}: run a study with `hpo run SPEC`, or pass the --tracking-uri "
                             "the study ran with")
        return
    try:
        why = _damage(db, TABLES.get(kind, ()) if not write else ())
    except OSError as exc:  # a dangling link, or a file the user may not read
        raise StoreError(f"cannot read the store at {db} ({exc.strerror or exc}); check that it exists and "
                         "that you may read it") from None
    if why:
        raise StoreError(damaged_message(db, why))


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a sqlite store's folder (no-op for servers).

    Refuses (:class:`StoreError`, :func:`check_store`) a store this process may not write, then,
    holding the lock, a damaged one: under the lock because another process may be making the
    files right now (MLflow's migrations, when there is no template, run in an empty file).
    """
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    check_writable(uri)
    lock = db.parent / ".hpo.lock"
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")
    except OSError as exc:  # checked above; a race or a filesystem that says no on its own
        raise StoreError(f"cannot create the lock file {lock} ({exc.strerror or exc}); make {db.parent} "
                         "writable or pass another --tracking-uri") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            check_store(uri, write=True)
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
    """Open every later connection to the sqlite database of ``uri`` in WAL mode (no-op for other URIs).

    For writers: refuses first (:class:`StoreError`, :func:`check_store`) a file this process may not
    write, or a damaged one.
    """
    global _LISTENING
    db = sqlite_path(uri)
    if db is None:
        return
    check_store(uri, write=True)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot make the store folder {db.parent} ({exc.strerror or exc}); pass another "
                         "--tracking-uri") from None
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

    Call it under :func:`store_lock`; other URIs are left alone. Raises :class:`StoreError` when the
    folder cannot be written.
    """
    db = sqlite_path(uri)
    if db is None or db.exists():
        return
    template = _mlflow_template()
    if template is None:
        return
    partial = db.with_name(db.name + ".seeding")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, partial)
        os.replace(partial, db)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"cannot create the store {db} ({exc.strerror or exc}); make {db.parent} writable or "
                         "pass another --tracking-uri") from None
