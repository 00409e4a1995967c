"""The embedded sqlite stores: WAL mode on hpo's own files only, new MLflow stores from a pre-migrated copy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from hpo.sqlite_store import seed_mlflow_db, use_wal
from hpo.tracking import Tracker


def _journal(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()


def test_a_new_store_is_a_migrated_copy_in_wal_mode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    tracker = Tracker(uri, "exp", "study")
    db = tmp_path / "mlruns" / "mlflow.db"
    assert _journal(db) == "wal"  # hpo's connections switched the file to WAL (it stays so)
    client = MlflowClient(tracking_uri=uri)
    # MLflow recreated its default experiment here, not where the template was made
    assert client.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
    assert client.get_experiment(tracker.experiment_id).name == "exp"
    run = client.create_run(tracker.experiment_id)  # a fully working store
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}


def test_an_existing_store_is_left_as_it_is(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE mine (x)")
    con.commit()
    con.close()
    seed_mlflow_db(f"sqlite:///{db}")
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["mine"]
    con.close()


def test_wal_only_for_registered_files(tmp_path):
    from sqlalchemy import create_engine, text

    mine, other = tmp_path / "mine.db", tmp_path / "other.db"
    use_wal(f"sqlite:///{mine}")
    for db in (mine, other):
        engine = create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE t (x)"))
            conn.commit()
        engine.dispose()
    assert _journal(mine) == "wal"
    assert _journal(other) == "delete"  # a user's own sqlite engine is not touched


def test_seeding_copies_a_migrated_database_without_experiments(tmp_path):
    db = tmp_path / "new" / "mlflow.db"
    seed_mlflow_db(f"sqlite:///{db}")
    con = sqlite3.connect(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"experiments", "runs", "metrics", "alembic_version"} <= tables
        assert con.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        con.close()


# ------------------------------------------------------------------ damaged stores, read-only opening

def _make_db(db: Path, tables: tuple[str, ...] = ("studies", "trials", "version_info", "alembic_version"),
             rows: int = 200) -> None:
    """A real sqlite file of several pages with the given tables."""
    con = sqlite3.connect(db)
    for t in tables:
        con.execute(f"CREATE TABLE {t} (x BLOB)")
        con.executemany(f"INSERT INTO {t} VALUES (?)", [(bytes(100),)] * rows)
    con.commit()
    con.close()


def _refusal(uri: str, **kw) -> str:
    from hpo.sqlite_store import StoreError, check_store

    with pytest.raises(StoreError) as info:
        check_store(uri, **kw)
    return str(info.value)


def test_check_store_names_each_kind_of_damage(tmp_path):
    from hpo.sqlite_store import check_store

    db = tmp_path / "optuna.db"
    uri = f"sqlite:///{db}"
    _make_db(db)
    check_store(uri, write=False, kind="optuna")  # whole
    check_store(uri, write=True)
    good = db.read_bytes()

    db.write_bytes(good[: len(good) // 2])
    assert _refusal(uri, write=False) == (
        f"the store at {db} is damaged (it is truncated: {len(good) // 2} of {len(good)} bytes); restore it from "
        f"a backup (sqlite3 {db} .recover | sqlite3 NEW.db salvages what is left)")
    db.write_bytes(b"")
    assert "(the file is empty)" in _refusal(uri, write=True)
    db.write_bytes(b"x" * len(good))
    assert "(it is not an SQLite database: its header is wrong)" in _refusal(uri, write=False)
    page = int.from_bytes(good[16:18], "big")
    db.write_bytes(good[:page] + bytes(3 * page) + good[4 * page:])  # header and size intact
    assert "quick_check" in _refusal(uri, write=False)
    db.unlink()
    assert f"no store at {db}" in _refusal(uri, write=False)
    check_store(uri, write=True)  # a writer makes a new one
    _make_db(db, tables=("studies",))
    assert "(it has no trials, version_info, alembic_version tables)" in _refusal(uri, write=False, kind="optuna")


def test_a_live_wal_store_is_whole_and_readable_read_only(tmp_path):
    """While a study runs, its newest rows sit in the -wal file: the check and readers see them."""
    from sqlalchemy import create_engine, text

    from hpo.sqlite_store import check_store, read_only_uri

    db = tmp_path / "optuna.db"
    writer = sqlite3.connect(db)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")  # keep every page in the WAL, as mid-study
    try:
        for t in ("studies", "trials", "version_info", "alembic_version"):
            writer.execute(f"CREATE TABLE {t} (x)")
        writer.execute("INSERT INTO trials VALUES (1)")
        writer.commit()
        uri = f"sqlite:///{db}"
        check_store(uri, write=False, kind="optuna")
        engine = create_engine(read_only_uri(uri))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM trials")).scalar() == 1
        engine.dispose()
    finally:
        writer.close()


def test_read_only_uri_opens_that_file_and_cannot_write_it(tmp_path):
    from sqlalchemy import create_engine, exc, text

    from hpo.sqlite_store import read_only_uri

    folder = tmp_path / "odd name#1%20?x"  # characters SQLAlchemy and sqlite URIs both give meanings to
    folder.mkdir()
    db = folder / "mlflow.db"
    _make_db(db, tables=("runs",), rows=3)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    engine = create_engine(read_only_uri(f"sqlite:///{db}"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 3
        with pytest.raises(exc.OperationalError, match="readonly"):
            conn.execute(text("INSERT INTO runs VALUES (1)"))
    engine.dispose()
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no -shm, -wal or stray file made
    assert read_only_uri("http://host:5000") == "http://host:5000"


def test_writers_refuse_a_damaged_store_and_write_nothing_to_it(tmp_path):
    from hpo.sqlite_store import StoreError, store_lock

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"")
    with pytest.raises(StoreError, match="is damaged"), store_lock(f"sqlite:///{db}"):
        pass
    with pytest.raises(StoreError, match="is damaged"):
        use_wal(f"sqlite:///{db}")
    with pytest.raises(StoreError, match="is damaged"):
        Tracker(f"sqlite:///{db}", "exp", "study")
    # checked under the lock (another process may be making the store): the lock file is all that appears
    assert sorted(p.name for p in db.parent.iterdir()) == [".hpo.lock", "mlflow.db"]
    assert db.stat().st_size == 0
