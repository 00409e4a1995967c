"""The outbox's spool on disk: it records the store its writes are for, `hpo sync` and resume send
them only there, and a write the store refuses is kept and reported, never dropped.

Writes wait in a real spool because a real MLflow client finds no server at a free port; they are
sent to a real sqlite MLflow store in tmp_path and read back with ``MlflowClient``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests._services import free_port
from tests.conftest import run_cli


@pytest.fixture
def dead_client():
    """An MLflow client for a tracking server that is not there (every write is an outage)."""
    from mlflow import MlflowClient

    from hpo.outbox import HTTP_ENV

    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    return MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def local_store(tmp_path):
    """A real sqlite MLflow store with one experiment: (uri, client, experiment id)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, client.create_experiment("spool", artifact_location=(tmp_path / "art").as_uri())


def _spool_for(dead_client, spool: Path, target: str, experiment_id: str, *, bad_run: str | None = None):
    """Queue a trial's writes (create, params, metrics, close) in ``spool`` recorded for ``target``."""
    from hpo.outbox import Outbox

    box = Outbox(dead_client, spool, grace_s=60, retry_s=60, target=target)
    run = box.create_run(experiment_id, "trial-000", {"hpo.trial": "0"})
    box.log_batch(run, metrics=[("val_accuracy", 0.5, 1, 1)], params={"lr": "0.1"})
    box.set_terminated(run, "FINISHED")
    if bad_run is not None:
        box.set_tag(bad_run, "hpo.state", "complete")  # a run the target store does not have
    assert box.pending == (4 if bad_run else 3)
    return box


def test_the_spool_records_its_target_without_the_password(dead_client, tmp_path):
    from hpo.spool import TARGET_FILE, read_target

    spool = tmp_path / "spool"
    _spool_for(dead_client, spool, "http://hpo:s3cret-pw@tracking.example:5000/", "1")
    text = (spool / TARGET_FILE).read_text()
    assert "s3cret-pw" not in text
    target = read_target(spool)
    assert target.secret and target.uri == "http://hpo:***@tracking.example:5000"
    assert target.matches("http://hpo:s3cret-pw@tracking.example:5000")
    assert not target.matches("http://hpo:other@tracking.example:5000")
    assert not target.matches("http://hpo:***@tracking.example:5000")
    assert json.loads(text)["salt"] not in target.digest

    plain = tmp_path / "plain"
    _spool_for(dead_client, plain, "sqlite:///mlruns/mlflow.db", "1")  # relative: recorded by its absolute path
    assert read_target(plain).uri == f"sqlite:///{Path('mlruns/mlflow.db').resolve()}"
    assert not read_target(plain).secret


def test_resolve_target_uses_the_recorded_store_and_refuses_another(dead_client, tmp_path):
    from hpo.errors import TrackingError
    from hpo.spool import resolve_target

    spool = tmp_path / "spool"
    _spool_for(dead_client, spool, "http://127.0.0.1:5000", "1")
    assert resolve_target(spool, None) == "http://127.0.0.1:5000"
    assert resolve_target(spool, "http://127.0.0.1:5000/") == "http://127.0.0.1:5000/"  # same store
    with pytest.raises(TrackingError) as info:
        resolve_target(spool, "http://user:pw@127.0.0.1:6000", command="hpo sync s")
    msg = str(info.value)
    assert "http://127.0.0.1:5000" in msg and "http://user:***@127.0.0.1:6000" in msg and "pw@" not in msg
    assert "--force-target" in msg
    assert resolve_target(spool, "http://127.0.0.1:6000", force=True) == "http://127.0.0.1:6000"

    secret = tmp_path / "secret"
    _spool_for(dead_client, secret, "http://hpo:pw@127.0.0.1:5000", "1")
    with pytest.raises(TrackingError, match=r"does not save its password.*--tracking-uri 'http://hpo:\*\*\*@"):
        resolve_target(secret, None, command="hpo sync s")
    assert resolve_target(secret, "http://hpo:pw@127.0.0.1:5000") == "http://hpo:pw@127.0.0.1:5000"
    with pytest.raises(TrackingError, match="differ in the password"):
        resolve_target(secret, "http://hpo:old@127.0.0.1:5000")

    legacy = tmp_path / "legacy"  # written by an hpo that recorded no target: the user must name it
    legacy.mkdir()
    (legacy / "ops-d-1.jsonl").write_text('{"op": "set_tag", "run": "r", "key": "k", "value": "v"}\n')
    with pytest.raises(TrackingError, match="do not record which tracking store"):
        resolve_target(legacy, None)
    assert resolve_target(legacy, "http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_sync_sends_what_it_can_and_keeps_and_reports_what_the_store_refuses(dead_client, local_store, tmp_path):
    """A write for a run the store lacks, a run whose create fails (unknown experiment) and the writes
    for that run: kept in failed-*.jsonl with the reason, SyncError raised, the rest sent."""
    from hpo.outbox import Outbox, sync
    from hpo.spool import SyncError, failed_writes, waiting

    uri, client, exp = local_store
    spool = tmp_path / "mlruns" / ".outbox" / "s"
    _spool_for(dead_client, spool, uri, exp, bad_run="0" * 32)
    orphan = Outbox(dead_client, spool, grace_s=60, retry_s=60, target=uri, role="s")
    lost = orphan.create_run("987654", "trial-001", {"hpo.trial": "1"})  # no such experiment in the store
    orphan.log_batch(lost, metrics=[("val_accuracy", 0.7, 1, 1)])

    with pytest.raises(SyncError) as info:
        sync(client, spool)
    msg = str(info.value)
    assert "3 tracking writes could not be sent" in msg and str(spool) in msg, msg
    assert "set_tag of run " + "0" * 32 in msg and "its run was never created" in msg, msg
    assert waiting(spool) == 0
    failed = failed_writes(spool)
    assert sorted(op["op"] for op in failed) == ["create_run", "log_batch", "set_tag"]
    assert all(op["error"] for op in failed)

    runs = client.search_runs([exp])  # what the store could take did arrive
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params == {"lr": "0.1"} and runs[0].data.metrics == {"val_accuracy": 0.5}

    with pytest.raises(SyncError):  # still reported by the next sync: never a silent success
        sync(client, spool)
    for f in spool.glob("failed-*.jsonl"):  # the user gives them up
        f.unlink()
    assert tuple(sync(client, spool)) == (0, 0)


def test_hpo_sync_cli_sends_to_the_recorded_store_and_refuses_a_missing_or_other_one(dead_client, tmp_path):
    """`hpo sync NAME` with no flag: the recorded sqlite store (exit 0, read back); the store gone:
    exit 2 and no new store; another URI: exit 2 naming both; a refused write: exit 1, kept."""
    from mlflow import MlflowClient

    db = tmp_path / "mlruns" / "mlflow.db"
    uri = f"sqlite:///{db}"
    spool = tmp_path / "mlruns" / ".outbox" / "s"
    _spool_for(dead_client, spool, uri, "1", bad_run="0" * 32)

    gone = run_cli("sync", "s", cwd=tmp_path)  # the store the writes were made for is not there
    assert gone.returncode == 2 and f"no MLflow store at {db}" in gone.stderr, gone.stdout + gone.stderr
    assert not db.exists() and "Traceback" not in gone.stderr

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("s", artifact_location=(tmp_path / "art").as_uri())
    assert exp == "1"
    other_db = db.with_name("other.db")  # the same folder, so the same spool
    other = run_cli("sync", "s", "--tracking-uri", f"sqlite:///{other_db}", "--force-target",
                    cwd=tmp_path)  # forced, but that store does not exist: refused, not created
    assert other.returncode == 2 and f"no MLflow store at {other_db}" in other.stderr, other.stdout + other.stderr
    assert not other_db.exists()

    mismatch = run_cli("sync", "s", "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert mismatch.returncode == 2 and uri in mismatch.stderr and "http://127.0.0.1:9" in mismatch.stderr

    sent = run_cli("sync", "s", cwd=tmp_path)
    assert sent.returncode == 1, sent.stdout + sent.stderr  # the set_tag on a run the store lacks
    assert "1 tracking writes could not be sent" in sent.stderr and "failed-d-" in sent.stderr
    assert "Traceback" not in sent.stderr
    runs = client.search_runs([exp])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert list(spool.glob("failed-*.jsonl")) and not list(spool.glob("ops-*.jsonl"))


@pytest.mark.slow
def test_a_study_refuses_a_spool_left_for_another_store(dead_client, write_spec, tmp_path):
    """The study's own set-up (run and --resume) syncs first: a spool recorded for another URI stops
    it with exit 2 naming both; the waiting writes stay."""
    from hpo.spool import waiting

    spec = write_spec("""
        name: elsewhere
        data: {dataset: iris}
        model: mlp
        search: {n_trials: 1}
        cv: {folds: 2}
        params: {lr: 0.01, width: 8, depth: 1, epochs: 1, batch_size: 32}
        tracking: {report: false}
    """)
    spool = tmp_path / "mlruns" / ".outbox" / "elsewhere"
    _spool_for(dead_client, spool, "http://127.0.0.1:5000", "1")
    res = run_cli("run", str(spec), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "http://127.0.0.1:5000" in out and f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" in " ".join(out.split())
    assert "Traceback" not in out and waiting(spool) == 3


def test_a_write_for_a_placeholder_nothing_creates_is_kept_not_left_blocking(dead_client, local_store, tmp_path):
    """On resume a trial may name a placeholder whose create was given up: its write is kept in the
    failed file at once instead of waiting forever in front of every later write."""
    from hpo.outbox import Outbox
    from hpo.spool import failed_writes

    uri, client, exp = local_store
    spool = tmp_path / "mlruns" / ".outbox" / "s"
    waiting_box = Outbox(dead_client, spool, grace_s=60, retry_s=60, target=uri, role="s")
    awaited = waiting_box.create_run(exp, "trial-001", {})  # its create waits in another process's file

    box = Outbox(client, spool, target=uri)
    run = client.create_run(exp).info.run_id
    box.set_terminated("pending-" + "f" * 32, "KILLED")  # nothing creates it
    box.log_batch(awaited, metrics=[("val_accuracy", 0.5, 1, 1)])  # waits for that create
    assert box.pending == 1 and [op["op"] for op in failed_writes(spool)] == ["set_terminated"]
    assert "never created" in failed_writes(spool)[0]["error"]
    box.set_tag(run, "hpo.state", "complete")  # queued behind the waiting write, but not lost
    assert box.pending == 2
