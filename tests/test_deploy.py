"""The deployment files agree with each other and with pyproject.toml.

No Docker engine is needed: compose.yaml and the Kubernetes example are parsed with PyYAML,
the Dockerfile is read as text, and the two scripts the image runs (the GPU-slot worker
entrypoint and the health check) are run here against stand-ins. The topology itself
(PostgreSQL -> MLflow server -> hpo) is exercised natively by tests/test_postgres_mlflow.py.
"""

from __future__ import annotations

import http.server
import os
import re
import shlex
import socketserver
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import hpo

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
SERVICES = {"postgres", "mlflow", "ray-head", "ray-worker", "client"}


class ComposeLoader(yaml.SafeLoader):
    """PyYAML plus compose's ``!reset`` tag (used by compose.cpu.yaml; it loads as None)."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def load_compose(name: str = "compose.yaml") -> dict:
    return yaml.load((DOCKER / name).read_text(), Loader=ComposeLoader)


def env_example() -> dict[str, str]:
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X-default}, ${X:?error}, $$."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            missing = not value if op == ":?" else value is None
            if missing:
                raise KeyError(f"{name}: {arg}")
            return value
        return value or ""

    return VAR.sub(one, text).replace("$$", "$")


def resolved(obj, env):
    if isinstance(obj, str):
        return interpolate(obj, env)
    if isinstance(obj, list):
        return [resolved(x, env) for x in obj]
    if isinstance(obj, dict):
        return {k: resolved(v, env) for k, v in obj.items()}
    return obj


def filled_env() -> dict[str, str]:
    """.env.example with the two secrets filled in, as a user's .env would be."""
    env = env_example()
    env.update(POSTGRES_PASSWORD="0123abcd", RAY_AUTH_TOKEN="feedbeef")
    return env


def flags(command: list[str]) -> dict[str, str]:
    """``--key=value`` / bare ``--flag`` items of a command list."""
    out = {}
    for item in command:
        if item.startswith("--"):
            key, _, value = item[2:].partition("=")
            out[key] = value
    return out


def pyproject_requirements(extras=("ray", "server")) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def dockerfile_arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)", dockerfile(), re.M)
    assert m, f"Dockerfile has no ARG {name}=..."
    return m.group(1)


# ---------------------------------------------------------------------------- compose.yaml


def test_compose_has_the_services_and_every_variable_is_in_env_example():
    compose = load_compose()
    assert set(compose["services"]) == SERVICES
    assert compose["services"]["client"]["profiles"] == ["client"]
    example = env_example()
    for name in ("compose.yaml", "compose.cpu.yaml"):
        used = {m.group(1) for m in VAR.finditer((DOCKER / name).read_text())}
        assert used <= set(example), f"{name} uses variables missing from .env.example: {used - set(example)}"
    used = {m.group(1) for m in VAR.finditer((DOCKER / "compose.yaml").read_text())}
    assert set(example) <= used, f".env.example has keys compose.yaml never uses: {set(example) - used}"


def test_secrets_are_required_and_not_committed():
    text = (DOCKER / "compose.yaml").read_text()
    example = env_example()
    for secret in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{secret} must be required (${{{secret}:?...}})"
        assert example[secret] == "", f".env.example must not carry a value for {secret}"
    with pytest.raises(KeyError):
        resolved(load_compose(), env_example())  # compose refuses to start without them
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


@pytest.mark.parametrize("env", ["example", "defaults"])
def test_published_ports_bind_to_loopback(env):
    values = filled_env() if env == "example" else {"POSTGRES_PASSWORD": "x", "RAY_AUTH_TOKEN": "y"}
    compose = resolved(load_compose(), values)
    published = {}
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            host_ip, host_port, container_port = str(port).rsplit(":", 2)
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond the loopback"
            published[name] = (int(host_port), int(container_port))
    assert published == {"mlflow": (5000, 5000), "ray-head": (8265, 8265)}


def test_mlflow_server_uses_postgres_and_serves_artifacts():
    compose = resolved(load_compose(), filled_env())
    mlflow, postgres = compose["services"]["mlflow"], compose["services"]["postgres"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    opts = flags(command)
    assert "serve-artifacts" in opts and opts["port"] == "5000" and opts["host"] == "0.0.0.0"
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend == "postgresql+psycopg2://mlflow:0123abcd@postgres:5432/mlflow"
    assert "backend-store-uri" not in opts, "the DB password must not be on the command line"
    mounts = dict(v.split(":")[::-1] for v in mlflow["volumes"])
    assert mounts[opts["artifacts-destination"]] == "mlflow-artifacts"
    assert "mlflow-artifacts" in compose["volumes"] and "pgdata" in compose["volumes"]
    assert "pgdata:/var/lib/postgresql/data" in postgres["volumes"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = postgres["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"], env["POSTGRES_PASSWORD"]) == ("mlflow", "mlflow", "0123abcd")
    # what the cluster calls the server must be a host the server accepts
    allowed = opts["allowed-hosts"].split(",")
    assert "mlflow:5000" in allowed and "127.0.0.1:*" in allowed
    assert filled_env()["CLUSTER_TRACKING_URI"] == "http://mlflow:5000"
    assert compose["services"]["ray-head"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_postgres_is_reachable_from_mlflow_only():
    compose = load_compose()
    assert compose["networks"]["backend"]["internal"] is True
    on_backend = {n for n, s in compose["services"].items() if "backend" in s.get("networks", [])}
    assert on_backend == {"postgres", "mlflow"}
    assert compose["services"]["postgres"]["networks"] == ["backend"]
    assert "ports" not in compose["services"]["postgres"]


def test_ray_ports_addresses_and_token_are_consistent():
    compose = resolved(load_compose(), filled_env())
    head, worker, client = (compose["services"][n] for n in ("ray-head", "ray-worker", "client"))
    assert head["command"][:3] == ["ray", "start", "--head"]
    opts = flags(head["command"])
    gcs, dash = opts["port"], opts["dashboard-port"]
    assert (gcs, dash) == ("6379", "8265")
    assert opts["dashboard-host"] == "0.0.0.0" and "block" in opts
    assert set(head["expose"]) == {gcs, dash}
    assert head["ports"] == [f"127.0.0.1:8265:{dash}"]
    assert worker["environment"]["RAY_HEAD_ADDRESS"] == f"ray-head:{gcs}"
    assert client["environment"]["RAY_ADDRESS"] == f"http://ray-head:{dash}"
    for svc in (head, worker, client):
        assert svc["environment"]["RAY_AUTH_MODE"] == "token"
        assert svc["environment"]["RAY_AUTH_TOKEN"] == "feedbeef"
        assert "cluster" in svc["networks"]
    assert compose["services"]["mlflow"]["networks"] == ["backend", "cluster"]


def test_ray_workers_reserve_gpus_and_can_be_scaled():
    compose = load_compose()
    worker = compose["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    # --scale needs replicas without fixed names or host ports
    assert "container_name" not in worker and "ports" not in worker
    assert worker["command"] == ["hpo-ray-worker"]
    assert "COPY --chmod=0755 docker/ray_worker.py /usr/local/bin/hpo-ray-worker" in dockerfile()
    slots = [v for v in worker["volumes"] if v.startswith("gpu-slots:")]
    assert slots == ["gpu-slots:/var/lib/hpo/gpu-slots"]
    assert '"/var/lib/hpo/gpu-slots"' in (DOCKER / "ray_worker.py").read_text()
    assert "/var/lib/hpo/gpu-slots" in dockerfile()  # created in the image, owned by hpo
    # the CPU override drops the GPU reservation and makes workers CPU-only
    cpu = load_compose("compose.cpu.yaml")["services"]["ray-worker"]
    assert cpu["deploy"] is None and cpu["environment"]["GPUS_PER_WORKER"] == "0"


def test_healthchecks_match_the_roles_and_ports():
    sys.path.insert(0, str(DOCKER))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(DOCKER))
    compose = load_compose()
    for name in ("mlflow", "ray-head", "ray-worker"):
        svc = compose["services"][name]
        assert svc["environment"]["HPO_ROLE"] == name and name in healthcheck.CHECKS
        assert svc["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/hpo-healthcheck"]
    assert healthcheck.CHECKS["mlflow"].startswith("http://127.0.0.1:5000/")
    assert healthcheck.CHECKS["ray-head"].startswith("http://127.0.0.1:8265/")
    assert compose["services"]["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert compose["services"]["ray-head"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert compose["services"]["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"


# ---------------------------------------------------------------------------- Dockerfile + versions


def test_dockerfile_variants_user_and_healthcheck():
    text = dockerfile()
    assert dockerfile_arg("VARIANT") == "gpu"
    assert re.search(r"^FROM \$\{CUDA_IMAGE\} AS base-gpu$", text, re.M)
    assert re.search(r"^FROM \$\{CPU_IMAGE\} AS base-cpu$", text, re.M)
    assert re.search(r"^FROM base-\$\{VARIANT\} AS hpo$", text, re.M)
    assert dockerfile_arg("CUDA_IMAGE").startswith("nvidia/cuda:13.0")
    assert dockerfile_arg("CPU_IMAGE").startswith("python:3.11-slim")
    assert "download.pytorch.org/whl/cpu" in dockerfile_arg("TORCH_CPU_INDEX")
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert re.search(rf"useradd .*--uid \"\$\{{HPO_UID\}}\".* {users[-1]}\b", text)
    assert re.search(r"^HEALTHCHECK .*CMD \[\"python\", \"/usr/local/bin/hpo-healthcheck\"\]", text, re.M | re.S)
    assert re.search(r'pip install .*-c /opt/hpo/constraints.txt "/opt/hpo/src\[ray,server\]"', text)
    # everything the Dockerfile copies exists and is let through the build-context filter
    allowed = [ln[1:].rstrip("/") for ln in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for line in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert src in allowed, f"COPY source {src} is excluded by Dockerfile.dockerignore"


def test_versions_agree_with_pyproject():
    pins = constraints()
    reqs = {canonicalize_name(r.name): r for r in pyproject_requirements()}
    torch_req = reqs["torch"]
    (spec,) = torch_req.specifier
    assert spec.operator == "==" and dockerfile_arg("TORCH_VERSION") == spec.version == pins["torch"]
    for name, req in reqs.items():
        regenerate = "; regenerate it: .venv/bin/python docker/constraints.py"
        assert name in pins, f"{name} (pyproject) is not pinned in docker/constraints.txt" + regenerate
        assert req.specifier.contains(Version(pins[name]), prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject's {req}" + regenerate
    for name in ("ray", "mlflow", "optuna", "psycopg2-binary"):
        assert name in pins
    # Ray 2.60 with token auth (RAY_AUTH_MODE) is what the stack is written for
    assert Version(pins["ray"]) >= Version("2.52")
    manifest = {d["kind"]: d for d in yaml.safe_load_all((DOCKER / "k8s" / "rayjob.yaml").read_text())}
    assert manifest["RayJob"]["spec"]["rayClusterSpec"]["rayVersion"] == pins["ray"]


def test_example_study_spec_is_valid():
    spec = hpo.load_spec(DOCKER / "examples" / "mnist5k_cnn_ray.yaml")
    assert spec.execution.executor == "ray" and spec.execution.gpus_per_trial > 0


# ---------------------------------------------------------------------------- Kubernetes example


def test_k8s_rayjob_runs_hpo_on_ray(tmp_path):
    text = (DOCKER / "k8s" / "rayjob.yaml").read_text()
    assert "EXAMPLE" in text.splitlines()[0]
    docs = {d["kind"]: d for d in yaml.safe_load_all(text)}
    assert set(docs) == {"ConfigMap", "RayJob"}
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "hpo", "run"]
    assert argv[argv.index("--executor") + 1] == "ray"
    assert argv[argv.index("--tracking-uri") + 1] == "http://mlflow:5000"
    spec_path = Path(argv[4])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volume = next(v for v in head["volumes"] if v["name"] == mounts[str(spec_path.parent)])
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    body = docs["ConfigMap"]["data"][spec_path.name]
    (tmp_path / spec_path.name).write_text(body)
    spec = hpo.load_spec(tmp_path / spec_path.name)
    assert spec.execution.executor == "ray"
    uid = int(dockerfile_arg("HPO_UID"))
    workers = cluster["workerGroupSpecs"]
    for pod in [head] + [w["template"]["spec"] for w in workers]:
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
    assert all(w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
               for w in workers)
    images = {c["image"] for pod in [head] + [w["template"]["spec"] for w in workers] for c in pod["containers"]}
    assert len(images) == 1, "head and workers must run the same image"


# ---------------------------------------------------------------------------- the image's scripts


def _worker(tmp_path: Path, gpus: int, per: int, sleep: float = 0.0, extra=()) -> subprocess.Popen:
    fake = tmp_path / "ray"
    fake.write_text('#!/bin/sh\necho "CVD=$CUDA_VISIBLE_DEVICES ARGS=$*"\nsleep "${FAKE_SLEEP:-0}"\n')
    fake.chmod(0o755)
    env = {**os.environ, "RAY_BIN": str(fake), "HPO_GPU_SLOTS_DIR": str(tmp_path / "slots"),
           "HPO_GPU_COUNT": str(gpus), "GPUS_PER_WORKER": str(per), "FAKE_SLEEP": str(sleep),
           "RAY_WORKER_CPUS": ""}
    return subprocess.Popen([sys.executable, str(DOCKER / "ray_worker.py"), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_slot(tmp_path: Path, n: int) -> None:
    import fcntl
    import time

    end = time.monotonic() + 10
    while time.monotonic() < end:
        held = 0
        for lock in (tmp_path / "slots").glob("gpu-slot-*.lock"):
            with open(lock) as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fh, fcntl.LOCK_UN)
                except BlockingIOError:
                    held += 1
        if held >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} slot(s) not taken in time")


def test_scaled_workers_take_distinct_gpus_and_the_extra_one_stops(tmp_path):
    first = _worker(tmp_path, gpus=4, per=2, sleep=20)
    second = None
    try:
        _wait_for_slot(tmp_path, 1)
        second = _worker(tmp_path, gpus=4, per=2, sleep=20)
        _wait_for_slot(tmp_path, 2)
        third = _worker(tmp_path, gpus=4, per=2)
        out, err = third.communicate(timeout=20)
        assert third.returncode == 3 and "scale ray-worker down to 2" in err
    finally:
        for proc in (first, second):
            if proc is not None:
                os.killpg(proc.pid, 15)
    outs = [proc.communicate(timeout=20)[0] for proc in (first, second)]
    assert "CVD=0,1 " in outs[0] and "CVD=2,3 " in outs[1]
    for out in outs:
        assert "ARGS=start --address=ray-head:6379 --num-gpus=2 --num-cpus=" in out and "--block" in out
    # a stopped worker frees its slot: the next one gets GPUs 0,1 again; extra args go to ray start
    again = _worker(tmp_path, gpus=4, per=2, extra=["--labels=x=1"])
    out, _ = again.communicate(timeout=20)
    assert again.returncode == 0 and "CVD=0,1 " in out and out.rstrip().endswith("--block --labels=x=1")


def test_cpu_worker_takes_no_slot(tmp_path):
    proc = _worker(tmp_path, gpus=0, per=0)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "CVD= " in out and "--num-gpus=0" in out
    assert not (tmp_path / "slots").exists()


def test_healthcheck_script(tmp_path):
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server(http.server.HTTPServer):
        def server_bind(self):  # HTTPServer's own looks up the host's FQDN (slow without DNS)
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    server = Server(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    script = str(DOCKER / "healthcheck.py")

    def check(role, url=None):
        env = {**os.environ, "HPO_ROLE": role}
        env.pop("HPO_HEALTH_URL", None)
        if url:
            env["HPO_HEALTH_URL"] = url
        return subprocess.run([sys.executable, script], env=env, capture_output=True, timeout=60).returncode

    try:
        assert check("mlflow", f"http://127.0.0.1:{port}/health") == 0
        assert check("ray-head", f"http://127.0.0.1:{port}/api/gcs_healthz") == 1
    finally:
        server.shutdown()
        server.server_close()
    assert check("ray-worker", f"http://127.0.0.1:{port}/api/local_raylet_healthz") == 1  # nothing listens
    assert check("client") == 0


def test_readme_covers_the_lifecycle():
    text = (DOCKER / "README.md").read_text()
    for needle in ("nvidia-ctk", "cp .env.example .env", "openssl rand", "docker compose up -d",
                   "hpo submit", "--tracking-uri http://mlflow:5000", "http://127.0.0.1:5000",
                   "--scale ray-worker", "docker compose down", "pg_dump", "pg_restore", "k8s/rayjob.yaml"):
        assert needle in text, needle
