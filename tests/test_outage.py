"""A tracking server that goes away mid-study: writes wait and are retried; a long outage stops
the study cleanly, `hpo sync` sends what waited, and `--resume` finishes the study.

The server is a real `mlflow server`; the outage is real too: the study talks to it through
a TCP relay in this test that stops accepting and cuts every open connection (what a
restarting server or a network partition looks like from the client).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests._layout import assert_layout
from tests._services import free_port, mlflow_server

pytestmark = pytest.mark.slow


class Relay:
    """Forwards 127.0.0.1:port to the server; :meth:`cut` refuses and drops connections, :meth:`restore` relays again."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        self._srv = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._srv,), daemon=True).start()

    def cut(self) -> None:
        srv, self._srv = self._srv, None
        if srv is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept(); close() alone does not
                srv.shutdown(socket.SHUT_RDWR)
            srv.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server (sqlite backend, served artifacts) for this module."""
    from hpo.sqlite_store import seed_mlflow_db

    base = tmp_path_factory.mktemp("mlflow-server")
    backend = f"sqlite:///{base / 'server.db'}"
    seed_mlflow_db(backend)  # skips MLflow's migrations: the server starts sooner
    with mlflow_server(backend, base / "artifacts") as url:
        yield url


SPEC = """\
name: {name}
data: {{dataset: digits}}
model: mlp
search: {{sampler: random, n_trials: {n}, seed: 0}}
cv: {{folds: 2}}
params:
  lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}
  width: 16
  depth: 1
  batch_size: 128
  epochs: {epochs}
tracking: {{uri: {uri}, report: false, outage_timeout: {grace}}}
"""


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finished(cwd: Path, name: str) -> int:
    """Finished trials of study ``name`` in the Optuna storage hpo keeps under ``cwd/mlruns``."""
    import sqlite3

    db = cwd / "mlruns" / "optuna.db"
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            return con.execute("SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                               "WHERE s.study_name = ? AND t.state IN ('COMPLETE', 'PRUNED')", (name,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not there yet
        return 0


def _wait_for(cond, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"hpo exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the study")
        time.sleep(0.1)


def _run_with_outage(cwd: Path, relay: Relay, name: str, *, n: int, grace: float, down_for: float | None,
                     epochs: int = 12):
    """`hpo run` a study through ``relay``; cut it once a trial finished, restore it after ``down_for``
    seconds (``None``: leave it down). Returns (exit code, output, spec path)."""
    spec = cwd / "spec.yaml"
    spec.write_text(SPEC.format(name=name, n=n, epochs=epochs, uri=relay.url, grace=grace))
    proc = _start(["run", str(spec)], cwd)
    try:
        _wait_for(lambda: _finished(cwd, name) >= 1, 240, proc)
        relay.cut()
        if down_for is not None:
            time.sleep(down_for)
            relay.restore()
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, spec


def _waiting(spool: Path) -> int:
    return sum(len(f.read_text().splitlines()) for f in spool.glob("ops-*.jsonl"))


def _layout(server: str, cwd: Path, spec: Path, **kw):
    """The study's whole MLflow layout on ``server`` (through no relay), against the Optuna storage under ``cwd``."""
    from mlflow import MlflowClient

    import hpo

    return assert_layout(MlflowClient(tracking_uri=server, registry_uri=server), None, hpo.load_spec(spec),
                         storage=f"sqlite:///{cwd / 'mlruns' / 'optuna.db'}", **kw)


def test_a_short_outage_loses_nothing(server, tmp_path):
    """The server vanishes for ~8 s mid-study: the study waits it out and every curve point arrives."""
    relay = Relay(int(server.rsplit(":", 1)[1]))
    name = "outage-short"
    try:
        returncode, out, spec = _run_with_outage(tmp_path, relay, name, n=4, grace=120, down_for=8)
    finally:
        relay.cut()
    assert returncode == 0, out
    assert "does not answer" in out and "back" in out, out  # it did notice the outage
    # every run, tag and artifact, and every epoch of every curve, none lost in the outage
    layout = _layout(server, tmp_path, spec)
    assert sorted(layout.children) == [0, 1, 2, 3] and {layout.state(n) for n in layout.children} == {"complete"}
    assert not list((tmp_path / "mlruns" / ".outbox").glob(f"{name}/ops-*.jsonl"))


def _sync(cwd: Path, name: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpo", "sync", name, *flags], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})


def test_a_long_outage_stops_cleanly_then_sync_and_resume_complete_the_study(server, tmp_path):
    """The spec's tracking.uri (no flag) is a server that stays away past tracking.outage_timeout:
    exit 75 with the URI in the hint; `hpo sync NAME` (no flag) sends the spool to that server,
    not to a local store, and refuses another URI; `--resume` ends with one child run per Optuna
    trial, none RUNNING, exactly n_trials finished, curves on every finished child."""
    relay = Relay(int(server.rsplit(":", 1)[1]))
    name, n = "outage-long", 5
    # long trials: the one running when the study gives up is cut short, and --resume re-runs it
    returncode, out, spec = _run_with_outage(tmp_path, relay, name, n=n, grace=4, down_for=None, epochs=40)
    assert returncode == 75, out
    hint = " ".join(out.split())  # the console wraps long lines
    assert f"hpo sync {name} --tracking-uri {relay.url}," in hint and "--resume" in hint, out
    assert "Traceback" not in out
    assert _finished(tmp_path, name) >= 1
    spool = tmp_path / "mlruns" / ".outbox" / name
    pending = [json.loads(line) for f in spool.glob("ops-*.jsonl") for line in f.read_text().splitlines()]
    assert pending and any(op["op"] == "set_terminated" for op in pending)

    # still down: sync (to the spool's own URI, given or not) says so and keeps everything
    for flags in ((), ("--tracking-uri", relay.url)):
        sync = _sync(tmp_path, name, *flags)
        assert sync.returncode == 2 and "not reachable" in sync.stderr and relay.url in sync.stderr, \
            sync.stdout + sync.stderr
        assert list(spool.glob("ops-*.jsonl"))
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()

    relay.restore()
    try:
        # another URI than the one the writes were made for (here: the same server by another port): refused
        wrong = _sync(tmp_path, name, "--tracking-uri", server)
        assert wrong.returncode == 2, wrong.stdout + wrong.stderr
        assert relay.url in wrong.stderr and server in wrong.stderr and "--force-target" in wrong.stderr
        assert "Traceback" not in wrong.stderr and list(spool.glob("ops-*.jsonl"))
        assert _waiting(spool) == len(pending)  # nothing was sent

        sync = _sync(tmp_path, name)
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert "sent" in sync.stdout and relay.url in sync.stdout
        assert not list(spool.glob("ops-*.jsonl")) and not list(spool.glob("failed-*.jsonl"))
        assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # nothing sent to (or created in) a local store
        # every trial Optuna finished has its MLflow run, closed, with its CV result and curves; the parent KILLED
        killed = _layout(server, tmp_path, spec, status="KILLED")
        # the driver's log, written while the server was away, arrived with the rest: it tells the outage
        from mlflow import MlflowClient

        study_log = MlflowClient(tracking_uri=server).download_artifacts(
            killed.parent.info.run_id, "logs/study.log", str(tmp_path / "logs"))
        assert "the tracking server does not answer" in Path(study_log).read_text()

        resumed = subprocess.run([sys.executable, "-m", "hpo", "run", str(spec), "--resume"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert not (tmp_path / "mlruns" / "mlflow.db").exists()
        # one parent FINISHED, one child per Optuna trial closed as it ended (interrupted ones KILLED), curves on each
        layout = _layout(server, tmp_path, spec, resumed=True)
        assert sum(not t.user_attrs.get("hpo.interrupted") for t in layout.trials) == n  # exactly n finished
    finally:
        relay.cut()


def test_outage_detection_on_a_real_refused_connection(tmp_path):
    """What MLflow's client raises for a dead server counts as an outage; a bad request does not."""
    from mlflow import MlflowClient

    from hpo.outbox import HTTP_ENV, Outbox, is_outage

    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Exception) as info:
        client.get_experiment_by_name("x")
    assert is_outage(info.value)
    assert not is_outage(ValueError("Invalid value for metric 'x'"))

    box = Outbox(client, tmp_path / "spool", grace_s=0.5, retry_s=0.1)
    run_id = box.create_run("1", "trial-000", {"hpo.trial": "0"})
    assert run_id.startswith("pending-")
    art = tmp_path / "ckpt.pt"
    art.write_bytes(b"weights")
    box.log_batch(run_id, metrics=[("val_accuracy", 0.5, 1, 1)])
    box.log_artifact(run_id, art)
    art.unlink()  # the caller's temp file may go: the spool kept a copy
    assert box.pending == 3 and box.down_since is not None
    lines = [json.loads(x) for x in next((tmp_path / "spool").glob("ops-d-*.jsonl")).read_text().splitlines()]
    assert [op["op"] for op in lines] == ["create_run", "log_batch", "log_artifact"]
    assert Path(lines[2]["local"]).read_bytes() == b"weights"
    time.sleep(0.6)
    assert not box.flush(force=True) and box.gave_up and box.pending == 3
