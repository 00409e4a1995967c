"""Security: passwords never printed or saved, servers behind basic auth accepted, nothing from
outside the working directory shipped by ``hpo submit``, tampered checkpoints never loaded."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import hpo
from hpo.checkpoint import read_checkpoint, save_checkpoint
from hpo.errors import HpoError, SpecError, TrackingError
from hpo.tracking import check_reachable
from tests.conftest import run_cli

USER, PASSWORD = "hpo", "s3cr@t:pw/x"  # '@', ':' and '/' must be percent-encoded in a URL
QUOTED = "s3cr%40t%3Apw%2Fx"


# ---------------------------------------------------------------- a server behind basic auth


class _BasicAuth(http.server.BaseHTTPRequestHandler):
    """Answers every path (``/health`` too, as a reverse proxy with basic auth does) only with the right
    credentials; remembers the Authorization headers it saw."""

    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        got = self.headers.get("Authorization")
        type(self).seen.append(got)
        if got != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()
            return
        body = b"OK"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@contextlib.contextmanager
def basic_auth_server() -> Iterator[int]:
    """A real HTTP server on 127.0.0.1 that requires basic auth; yields its port."""
    _BasicAuth.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BasicAuth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_reachability_sends_the_credentials_of_the_url(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with basic_auth_server() as port:
        check_reachable(f"http://{USER}:{QUOTED}@127.0.0.1:{port}")  # percent-encoded, as MLflow takes it
        assert _BasicAuth.seen[-1] == _BasicAuth.expected
        with pytest.raises(TrackingError, match="refused the credentials") as refused:
            check_reachable(f"http://{USER}:wrong-pw@127.0.0.1:{port}")
    assert "wrong-pw" not in str(refused.value) and f"{USER}:***@127.0.0.1:{port}" in str(refused.value)
    assert "MLFLOW_TRACKING_USERNAME" in str(refused.value)


def test_reachability_takes_mlflows_credential_variables(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    with basic_auth_server() as port:
        check_reachable(f"http://127.0.0.1:{port}/")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(TrackingError, match="HTTP 401"):
            check_reachable(f"http://127.0.0.1:{port}")


def test_unreachable_server_message_has_no_password():
    from tests._services import free_port

    with pytest.raises(TrackingError, match="not reachable") as err:
        check_reachable(f"http://{USER}:{QUOTED}@127.0.0.1:{free_port()}", timeout=2)
    assert QUOTED not in str(err.value) and f"{USER}:***@127.0.0.1" in str(err.value)


# ---------------------------------------------------------------- nothing printed


IRIS = """
name: {name}
data: {{dataset: iris}}
model: mlp
search: {{sampler: random, n_trials: 1, seed: 0}}
cv: {{folds: 2}}
tracking: {{report: false{tracking}}}
params:
  epochs: 1
"""


@pytest.mark.slow
def test_hpo_run_error_prints_no_password(tmp_path):
    from tests._services import free_port

    (tmp_path / "spec.yaml").write_text(IRIS.format(name="leak", tracking=""))
    uri = f"http://{USER}:{QUOTED}@127.0.0.1:{free_port()}"
    proc = run_cli("run", "spec.yaml", "--tracking-uri", uri, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "not reachable" in proc.stderr and f"{USER}:***@127.0.0.1" in proc.stderr
    assert QUOTED not in out and "Traceback" not in out
    assert not (tmp_path / "mlruns").exists()


def test_every_cli_error_is_redacted(tmp_path):
    """The error formatter itself redacts: a spec error that quotes the bad value (here a DSN with an
    empty user and a query-string password) prints neither password."""
    text = IRIS.format(name="leak", tracking="").replace("sampler: random", "sampler: 'postgresql://:hunter2@db/x?password=swordfish'")
    (tmp_path / "spec.yaml").write_text(text)
    proc = run_cli("validate", "spec.yaml", cwd=tmp_path, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "search.sampler" in proc.stderr and "postgresql://:***@db/x?password=***" in proc.stderr
    assert "hunter2" not in out and "swordfish" not in out and "Traceback" not in out


def test_hpo_validate_hides_the_tracking_password(tmp_path):
    (tmp_path / "spec.yaml").write_text(IRIS.format(name="leak", tracking=f", uri: 'http://{USER}:{QUOTED}@127.0.0.1:5000'"))
    proc = run_cli("validate", "spec.yaml", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert QUOTED not in proc.stdout + proc.stderr
    assert f"tracking: http://{USER}:***@127.0.0.1:5000" in proc.stdout


# ---------------------------------------------------------------- nothing saved


def test_checkpoint_holds_no_password(tmp_path):
    spec_raw = {"name": "s", "execution": {"executor": "ray", "address": "ray://admin:hunter2@head:10001"},
                "tracking": {"uri": "http://u:p@ss@mlflow:5000", "storage": "postgresql://:swordfish@db/optuna"},
                "data": {"dataset": "csv", "path": "s3://bucket/x.csv?X-Amz-Signature=deadbeef&v=1",
                         "options": [{"token": "tok123"}]}}
    path = save_checkpoint(tmp_path / "best.pt", model="mlp", params={"width": 8}, input_shape=(4,), n_outputs=3,
                           regression=False, state={"w": torch.zeros(2)}, extra={"spec": spec_raw, "trial": 0})
    raw = path.read_bytes()
    for secret in ("hunter2", "p@ss", "swordfish", "deadbeef", "tok123"):
        assert secret.encode() not in raw
    spec = read_checkpoint(path)["extra"]["spec"]
    assert spec["execution"]["address"] == "ray://admin:***@head:10001"
    assert spec["tracking"]["uri"] == "http://u:***@mlflow:5000"
    assert spec["tracking"]["storage"] == "postgresql://:***@db/optuna"
    assert spec["data"]["path"] == "s3://bucket/x.csv?X-Amz-Signature=***&v=1"
    assert spec["data"]["options"] == [{"token": "***"}]
    assert spec_raw["execution"]["address"] == "ray://admin:hunter2@head:10001"  # the caller's copy is untouched


@pytest.mark.slow
def test_a_studys_best_checkpoint_holds_no_password(write_spec, store):
    spec = write_spec(IRIS.format(name="ckpt-secret", tracking="")
                      + "execution: {executor: local, address: 'ray://admin:hunter2@head:10001'}\n")
    result = hpo.run(spec, tracking_uri=store)
    local = MlflowClient(store).download_artifacts(result.parent_run_id, "checkpoint/best.pt")
    assert b"hunter2" not in Path(local).read_bytes()
    assert read_checkpoint(local)["extra"]["spec"]["execution"]["address"] == "ray://admin:***@head:10001"


# ---------------------------------------------------------------- tampered checkpoints


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tampered(tmp_path: Path) -> dict[str, Path]:
    good = save_checkpoint(tmp_path / "good.pt", model="mlp", params={"width": 8}, input_shape=(4,), n_outputs=3,
                           regression=False, state={"w": torch.zeros(2)})
    files = {"payload": tmp_path / "payload.pt", "truncated": tmp_path / "truncated.pt"}
    torch.save({"format": 1, "state": _Payload(tmp_path / "pwned")}, files["payload"])
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with open(tmp_path / "plain-pickle.pt", "wb") as f:
        pickle.dump(_Payload(tmp_path / "pwned"), f)
    files["plain-pickle"] = tmp_path / "plain-pickle.pt"
    return files


def test_tampered_checkpoint_is_unreadable_or_unsafe(tmp_path):
    for kind, path in _tampered(tmp_path).items():
        with pytest.raises(HpoError, match="unreadable or unsafe") as err:
            read_checkpoint(path)
        assert str(path) in str(err.value), kind
        assert "weights_only=False" not in str(err.value)  # never the advice to load it unsafely
    assert not (tmp_path / "pwned").exists()  # the payload never ran


@pytest.mark.slow
def test_load_model_of_a_run_with_a_tampered_checkpoint(tmp_path, store):
    client = MlflowClient(store)
    exp = client.create_experiment("tampered", artifact_location=(tmp_path / "artifacts").as_uri())
    files = _tampered(tmp_path)
    for kind in ("payload", "truncated"):
        run = client.create_run(exp).info.run_id
        best = tmp_path / kind / "best.pt"
        best.parent.mkdir()
        best.write_bytes(files[kind].read_bytes())
        client.log_artifact(run, str(best), "checkpoint")
        with pytest.raises(HpoError, match="unreadable or unsafe") as err:
            hpo.load_model(run, tracking_uri=store)
        assert f"checkpoint/best.pt of run {run}" in str(err.value) and "no checkpoint" not in str(err.value)
    empty = client.create_run(exp).info.run_id
    with pytest.raises(TrackingError, match="has no checkpoint"):
        hpo.load_model(empty, tracking_uri=store)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- hpo submit ships only what is inside


CSV_SPEC = """
name: shipped
data: {dataset: cifar10, path: data/cifar-10-batches-py}
model: mlp
search: {n_trials: 1}
"""


def _project(tmp_path: Path) -> tuple[Path, Path]:
    """A working directory with a spec and a data folder, and a secret file outside it."""
    proj = tmp_path / "proj"
    data = proj / "data" / "cifar-10-batches-py"
    data.mkdir(parents=True)
    (data / "data_batch_1").write_bytes(b"batch")
    (proj / "spec.yaml").write_text(CSV_SPEC)
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    return proj, secret


def _shipped(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


def test_package_refuses_a_link_to_a_file_outside(tmp_path):
    from hpo.jobs import package

    proj, secret = _project(tmp_path)
    (proj / "data" / "cifar-10-batches-py" / "key").symlink_to(secret)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SpecError) as err:
        package(proj / "spec.yaml", out, cwd=proj)
    msg = str(err.value)
    assert "data.path: data/cifar-10-batches-py/key is a symbolic link to" in msg and str(secret) in msg
    assert "outside the working directory" in msg and "copy the file into the folder" in msg
    assert _shipped(out) == []  # nothing copied, not even the spec


def test_package_refuses_links_deep_inside_and_dangling_ones(tmp_path):
    from hpo.jobs import package

    proj, secret = _project(tmp_path)
    deep = proj / "data" / "cifar-10-batches-py" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "k").symlink_to(secret)
    (proj / "data" / "cifar-10-batches-py" / "gone").symlink_to(tmp_path / "nowhere")
    (proj / "data" / "cifar-10-batches-py" / "etc").symlink_to(tmp_path)  # a folder outside
    out = tmp_path / "out"
    with pytest.raises(SpecError) as err:
        package(proj / "spec.yaml", out, cwd=proj)
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert any("cifar-10-batches-py/a/b/k is a symbolic link" in line for line in lines)
    assert any("cifar-10-batches-py/gone is a symbolic link to" in line and "does not exist" in line for line in lines)
    assert any("cifar-10-batches-py/etc is a symbolic link" in line and "outside" in line for line in lines)
    assert _shipped(out) == []


def test_package_ships_links_that_stay_inside(tmp_path):
    from hpo.jobs import package

    proj, _ = _project(tmp_path)
    (proj / "shared").mkdir()
    (proj / "shared" / "data_batch_2").write_bytes(b"batch 2")
    (proj / "data" / "cifar-10-batches-py" / "data_batch_2").symlink_to(proj / "shared" / "data_batch_2")
    (proj / "data" / "cifar-10-batches-py" / "more").symlink_to("../../shared")  # relative, a folder
    out = tmp_path / "out"
    out.mkdir()
    assert package(proj / "spec.yaml", out, cwd=proj) == "spec.yaml"
    shipped = out / "data" / "cifar-10-batches-py"
    assert (shipped / "data_batch_2").read_bytes() == b"batch 2" and not (shipped / "data_batch_2").is_symlink()
    assert (shipped / "more" / "data_batch_2").read_bytes() == b"batch 2"
    assert (shipped / "data_batch_1").read_bytes() == b"batch"


def test_package_refuses_a_link_loop(tmp_path):
    from hpo.jobs import package

    proj, _ = _project(tmp_path)
    (proj / "data" / "cifar-10-batches-py" / "loop").symlink_to("..")
    with pytest.raises(SpecError, match="a folder that contains the link"):
        package(proj / "spec.yaml", tmp_path / "out", cwd=proj)


def test_hpo_submit_refuses_a_link_outside_before_contacting_the_cluster(tmp_path):
    proj, secret = _project(tmp_path)
    (proj / "data" / "cifar-10-batches-py" / "key").symlink_to(secret)
    (proj / "data" / "cifar-10-batches-py" / "dangling").symlink_to(tmp_path / "nowhere")
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"  # absolute: the submit goes on to packaging
    # port 9 (discard) has no Ray head: reaching the cluster would fail with another message
    proc = run_cli("submit", "spec.yaml", "--address", "http://127.0.0.1:9", "--tracking-uri", store, cwd=proj,
                   timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "shutil.Error" not in proc.stderr
    assert f"data/cifar-10-batches-py/key is a symbolic link to {secret}" in proc.stderr
    assert "data/cifar-10-batches-py/dangling is a symbolic link to" in proc.stderr
    assert "Ray Jobs API" not in proc.stderr


# ---------------------------------------------------------------- a real MLflow server behind basic auth


class _AuthProxy(http.server.BaseHTTPRequestHandler):
    """A reverse proxy with basic auth in front of an MLflow server (as nginx would be): every path,
    ``/health`` too, needs the credentials; the request then goes on to ``upstream`` unchanged."""

    upstream = ""
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        import urllib.error
        import urllib.request

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Authorization") != _BasicAuth.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "connection")}
        req = urllib.request.Request(self.upstream + self.path, data=body if body else None, method=self.command,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, out, items = resp.status, resp.read(), resp.headers.items()
        except urllib.error.HTTPError as exc:
            status, out, items = exc.code, exc.read(), exc.headers.items()
        self.send_response(status)
        for k, v in items:
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_hpo_run_against_mlflow_behind_basic_auth(tmp_path):
    """The whole study with the credentials in the URL, as MLflow itself takes them (the reachability
    check used to refuse such a URL), and no output showing the password."""
    from tests._services import mlflow_server

    (tmp_path / "spec.yaml").write_text(IRIS.format(name="behind-auth", tracking=""))
    with mlflow_server(f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}", tmp_path / "server" / "artifacts") as url:
        _AuthProxy.upstream = url
        proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthProxy)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            port = proxy.server_address[1]
            uri = f"http://{USER}:{QUOTED}@127.0.0.1:{port}"
            proc = run_cli("run", "spec.yaml", "--tracking-uri", uri, "--quiet", cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert QUOTED not in proc.stdout + proc.stderr
            runs = MlflowClient(url).search_runs([MlflowClient(url).get_experiment_by_name("behind-auth").experiment_id])
            assert {r.data.tags.get("hpo.role") for r in runs} == {"study", "trial"}
            assert all(r.info.status == "FINISHED" for r in runs)
        finally:
            proxy.shutdown()
            proxy.server_close()


@pytest.mark.slow
def test_hpo_submit_prints_no_password(tmp_path):
    from tests._services import free_port

    (tmp_path / "spec.yaml").write_text(IRIS.format(name="submitted", tracking=""))
    proc = run_cli("submit", "spec.yaml", "--address", "http://admin:hunter2@127.0.0.1:9", "--tracking-uri",
                   f"http://{USER}:{QUOTED}@127.0.0.1:{free_port()}", cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert f"note: from this machine, the tracking server http://{USER}:***@127.0.0.1" in proc.stderr
    assert "Ray Jobs API at http://admin:***@127.0.0.1:9" in proc.stderr
    assert "hunter2" not in out and QUOTED not in out and "Traceback" not in out
