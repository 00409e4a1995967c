"""The deployment's tracking topology, natively: PostgreSQL <- mlflow server (served artifacts) <- hpo.

What the compose stack runs in containers (docker/compose.yaml: postgres, mlflow), run
here as plain processes on 127.0.0.1: a throw-away PostgreSQL cluster and an ``mlflow
server`` on it that serves artifacts from a folder. A real study then talks to the server
over HTTP only, and the test reads back through the server and straight from PostgreSQL.

The fixtures are module-scoped so that further tests (the Ray cluster / ``hpo submit``
path) reuse the same two servers.
"""

from __future__ import annotations

import re
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

import hpo
from hpo.checkpoint import read_checkpoint
from tests._layout import assert_layout
from tests._services import mlflow_server, postgres_available, postgres_server

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STUDY = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: tpe, n_trials: 3, seed: 0}}
cv: {{folds: 2}}
params:
  lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
  width: [8, 16]
  epochs: 2
tracking: {{keep_checkpoints: 1}}
"""


@pytest.fixture(scope="module")
def pg_dsn():
    """A fresh PostgreSQL cluster; the DSN (``postgresql://hpo:PW@127.0.0.1:PORT/mlflow``)."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="module")
def served_artifacts(tmp_path_factory) -> Path:
    """The folder the MLflow server stores artifacts in (``--artifacts-destination``)."""
    return tmp_path_factory.mktemp("mlflow-server") / "artifacts"


def compose_allowed_hosts() -> str:
    """The ``--allowed-hosts`` default of docker/compose.yaml's mlflow service."""
    command = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["mlflow"]["command"]
    (flag,) = [c for c in command if c.startswith("--allowed-hosts=")]
    return re.fullmatch(r"--allowed-hosts=\$\{MLFLOW_ALLOWED_HOSTS:-([^}]*)\}", flag).group(1)


@pytest.fixture(scope="module")
def mlflow_url(pg_dsn, served_artifacts) -> str:
    """``mlflow server`` on the PostgreSQL store, serving artifacts, accepting the Host headers the
    compose stack's server accepts; its ``http://127.0.0.1:PORT``."""
    with mlflow_server(pg_dsn, served_artifacts, extra_args=[f"--allowed-hosts={compose_allowed_hosts()}"]) as url:
        yield url


def pg_rows(dsn: str, sql: str, *args) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def test_study_over_http_lands_in_postgres_and_served_artifacts(mlflow_url, pg_dsn, served_artifacts,
                                                                tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Optuna's own store (sqlite:///mlruns/optuna.db) lands here
    path = tmp_path / "pg_study.yaml"
    path.write_text(textwrap.dedent(STUDY.format(name="pg-iris")))
    spec = hpo.load_spec(path).replace(tracking_uri=mlflow_url)

    result = hpo.run(spec)

    assert result.counts["complete"] == 3
    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)

    # through the server, the whole layout: the parent run, its three nested child runs with their curves
    # (step = epoch), the summary, one trial checkpoint (keep_checkpoints: 1), the registered model
    layout = assert_layout(client, result, spec)
    parent, children = layout.parent, list(layout.children.values())
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    assert len(children) == 3 and {layout.state(n) for n in layout.children} == {"complete"}

    # ... and all of it really is in PostgreSQL
    run_ids = {r[0] for r in pg_rows(pg_dsn, "SELECT run_uuid FROM runs WHERE experiment_id = %s",
                                     int(result.experiment_id))}
    assert run_ids == {result.parent_run_id, *(c.info.run_id for c in children)}
    assert pg_rows(pg_dsn, "SELECT name FROM registered_models") == [("pg-iris",)]
    assert pg_rows(pg_dsn, "SELECT count(*) FROM model_versions WHERE name = %s", "pg-iris") == [(1,)]
    n_curve = pg_rows(pg_dsn, "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val_accuracy'",
                      children[0].info.run_id)[0][0]
    assert n_curve == 2
    assert pg_rows(pg_dsn, "SELECT value FROM tags WHERE run_uuid = %s AND key = 'hpo.role'",
                   result.parent_run_id) == [("study",)]

    # the checkpoint went up through the server into its artifact folder and comes back down
    stored = list(served_artifacts.rglob("checkpoint/best.pt"))
    assert len(stored) == 1 and result.parent_run_id in str(stored[0])
    local = client.download_artifacts(result.parent_run_id, "checkpoint/best.pt", str(tmp_path))
    blob = read_checkpoint(local)
    assert blob["model"] == "mlp" and blob["state"] is not None
    assert blob["params"]["width"] == result.best_params["width"]

    # keep_checkpoints: 1 -> one trial kept its fold weights; the others' were deleted over HTTP, from the folder too
    assert len(list(served_artifacts.rglob("checkpoint/trial.pt"))) == 1

    # the refit model loads back through the server
    model = hpo.load_model(result.parent_run_id, tracking_uri=mlflow_url)
    with torch.no_grad():
        out = model(torch.zeros(2, 4))
    assert out.shape == (2, 3)


def test_server_answers_the_cluster_name_and_refuses_other_hosts(mlflow_url):
    """The compose stack's ``--allowed-hosts``: the Ray nodes call the server http://mlflow:5000
    and the host's browser 127.0.0.1:PORT; any other Host header (DNS rebinding) is refused."""

    def status(host: str) -> int:
        req = urllib.request.Request(f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    port = mlflow_url.rsplit(":", 1)[1]
    assert status("mlflow:5000") == 200
    assert status(f"127.0.0.1:{port}") == 200
    assert status(f"localhost:{port}") == 200
    assert status("evil.example:5000") in (400, 403)


def test_submit_to_a_ray_head_and_worker_node_with_postgres_tracking(mlflow_url, pg_dsn, served_artifacts,
                                                                      tmp_path):
    """The compose topology natively: hpo submit -> Ray head (no CPUs) + one worker node; MLflow server on
    PostgreSQL with served artifacts; Optuna's storage in PostgreSQL too (so the study could be resumed)."""
    import os
    import subprocess
    import sys

    from tests._services import create_database, ray_cluster, sqlalchemy_uri

    optuna_db = sqlalchemy_uri(create_database(pg_dsn, "optuna"))
    proj = tmp_path / "proj"
    proj.mkdir()
    text = textwrap.dedent(STUDY.format(name="cluster-iris")) + (
        "execution: {executor: ray, max_concurrent_trials: 2, cpus_per_trial: 1}\n")
    text = text.replace("tracking: {keep_checkpoints: 1}", f"tracking: {{keep_checkpoints: 1, storage: '{optuna_db}'}}")
    (proj / "spec.yaml").write_text(text)
    with ray_cluster() as cluster:  # its own short temp dir: Ray's socket paths are length-limited
        env = {**os.environ, **cluster["env"], "NO_COLOR": "1"}
        proc = subprocess.run([sys.executable, "-m", "hpo", "submit", "spec.yaml", "--address", cluster["address"],
                               "--tracking-uri", mlflow_url, "--wait"], cwd=proj, env=env, capture_output=True,
                              text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "SUCCEEDED" in proc.stdout

    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    # the same layout as a local study (Optuna's storage: the spec's tracking.storage in PostgreSQL)
    layout = assert_layout(client, None, hpo.load_spec(proj / "spec.yaml").replace(tracking_uri=mlflow_url))
    children = list(layout.children.values())
    assert len(children) == 3
    # the head offers no CPUs: every trial ran on the worker node's processes
    assert all("cpu" in c.data.tags["hpo.worker"] for c in children)
    # in PostgreSQL: the runs (MLflow) and the trials (Optuna)
    ids = {r[0] for r in pg_rows(pg_dsn, "SELECT run_uuid FROM runs WHERE experiment_id = %s",
                                 int(layout.experiment_id))}
    assert ids == {layout.parent.info.run_id, *(c.info.run_id for c in children)}
    optuna_dsn = optuna_db.replace("postgresql+psycopg2://", "postgresql://")
    assert pg_rows(optuna_dsn, "SELECT count(*) FROM trials WHERE state = 'COMPLETE'") == [(3,)]
    # the checkpoint downloads through the server
    local = client.download_artifacts(layout.parent.info.run_id, "checkpoint/best.pt", str(tmp_path))
    assert read_checkpoint(local)["state"] is not None
