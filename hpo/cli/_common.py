"""Options and look-ups shared by several commands."""

from __future__ import annotations

import argparse
from typing import Any

from hpo.spec import DEFAULT_TRACKING_URI


def tracking_uri(value: str) -> str:
    """argparse type of ``--tracking-uri``: a URI hpo can use as a tracking store, else exit 2 with the rule."""
    from hpo.store_uris import store_uri_problem

    problem = store_uri_problem(value, "tracking")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def add_tracking_uri(p: argparse.ArgumentParser, *, check: bool = True) -> None:
    """``--tracking-uri`` (default: the spec's, else sqlite:///mlruns/mlflow.db), checked like ``tracking.uri``
    (``check=False`` where the spec's own validation checks the override and names the spec file)."""
    p.add_argument("--tracking-uri", metavar="URI", default=None, type=tracking_uri if check else str,
                   help=f"MLflow tracking store (default: the spec's tracking.uri, else {DEFAULT_TRACKING_URI})")


def open_study(name: str, tracking_uri: str | None, *, write: bool = False):
    """Load the Optuna study ``name`` stored next to ``tracking_uri``; HpoError if there is none.

    The stores beside it are ``optuna.db`` and, when there, the journal ``optuna.journal``
    (:func:`~hpo.tracking.optuna_storages_beside`); the study is looked for in each. Each store (and
    ``mlflow.db``, when present) is checked first and a damaged one is refused
    (:class:`~hpo.sqlite_store.StoreError`). The study is opened read-only (nothing is created,
    migrated or written, and a store the user may only read works), unless ``write`` and the user
    may write it.
    """
    from hpo.errors import HpoError
    from hpo.sqlite_store import check_store, sqlite_path
    from hpo.tracking import optuna_storages_beside

    uri = tracking_uri or DEFAULT_TRACKING_URI
    storages = optuna_storages_beside(uri)
    mlflow_db = sqlite_path(uri)
    if mlflow_db is not None and mlflow_db.exists():
        check_store(uri, write=False, kind="mlflow")
    names: list[str] = []
    present = False
    for storage in storages:
        study, there = _find_in(storage, name, write)
        if study is not None:
            return study
        present = present or there is not None
        names += there or []
    if not present:
        raise HpoError(f"no studies in {storages[0]}: run one with `hpo run SPEC` or pass --tracking-uri")
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise HpoError(f"no study named {name!r} in {' or '.join(storages)}{hint}; studies there: "
                   f"{', '.join(names) or 'none'}")


def _find_in(storage: str, name: str, write: bool) -> tuple[Any, list[str] | None]:
    """The study ``name`` in ``storage`` (or None) and the names of the studies there (None: no such file)."""
    import optuna

    from hpo.journal_store import journal_path
    from hpo.search import open_storage
    from hpo.sqlite_store import StoreError, check_store, read_only_uri, sqlite_path

    db = sqlite_path(storage)
    if db is not None and not (db.exists() or db.is_symlink()):
        return None, None
    check_store(storage, write=False, kind="optuna")
    if write:
        try:
            check_store(storage, write=True)
        except StoreError:  # a writer that may not write Optuna's file only skips what it would set there
            write = False
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a journal is read back from the file (a damaged one refused there); written only when the caller writes
    store = open_storage(storage) if journal_path(storage) is not None else None
    try:
        if store is None:
            store = optuna.storages.RDBStorage(storage if write else read_only_uri(storage), skip_table_creation=True)
        names = optuna.get_all_study_names(store)
        return (optuna.load_study(study_name=name, storage=store) if name in names else None), names
    except Exception as exc:  # checked whole above: what is left is access or a schema from another Optuna
        raise StoreError(f"cannot read the Optuna store at {db or storage} ({first_line(exc)}); check that you may "
                         "read it and its folder") from None


def mlflow_client(tracking_uri: str | None, *, write: bool = False):
    """An :class:`mlflow.MlflowClient` for ``tracking_uri`` (default: the local store).

    A sqlite store must exist and be whole (:class:`~hpo.sqlite_store.StoreError` otherwise: a
    reader never creates or migrates one); the client opens it read-only unless ``write``, which
    the caller has checked (:func:`~hpo.sqlite_store.check_store`) it may.
    """
    from mlflow import MlflowClient

    from hpo.sqlite_store import check_store, read_only_uri, sqlite_path

    uri = tracking_uri or DEFAULT_TRACKING_URI
    if sqlite_path(uri) is not None:
        check_store(uri, write=False, kind="mlflow")
        if not write:
            uri = read_only_uri(uri)
    return MlflowClient(tracking_uri=uri)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message without SQLAlchemy's statement and links."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
