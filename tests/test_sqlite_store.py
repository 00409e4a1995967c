"""The embedded sqlite stores: WAL mode on hpo's own files only, new MLflow stores from a pre-migrated copy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
