"""Throw-away servers for tests: a PostgreSQL cluster and an MLflow tracking server.

Both run on 127.0.0.1 on a free port, live in a temporary folder, and are stopped by the
PID this module started (never by name). Use them as context managers::

    with postgres_server() as dsn, mlflow_server(dsn, tmp / "artifacts") as url:
        ...  # dsn: postgresql://hpo:PASSWORD@127.0.0.1:PORT/mlflow, url: http://127.0.0.1:PORT

PostgreSQL comes from the Debian package (``/usr/lib/postgresql/<v>/bin``) or ``PATH``.
``initdb`` refuses to run as root, so as root the cluster is created and run as the
``postgres`` system user (``runuser -u postgres --``) in a folder owned by it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PG_USER = "hpo"  # the role the DSN logs in as (like the compose stack's POSTGRES_USER)
PG_DB = "mlflow"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """The folder holding ``initdb``/``pg_ctl`` (newest Debian version first), or ``None``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def postgres_available() -> str | None:
    """``None`` when :func:`postgres_server` can run here, else the reason it cannot."""
    if pg_bindir() is None:
        return "PostgreSQL is not installed (no initdb; Debian: apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def postgres_server(workdir: Path | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run a fresh PostgreSQL cluster; yields the DSN of database ``mlflow`` owned by role ``hpo``.

    The role has a random password (scram-sha-256 over TCP, as a real server would ask) and
    may create databases (see :func:`create_database`). The cluster is stopped with
    ``pg_ctl -m fast stop``, its postmaster killed by PID if that fails, and its folder removed.
    ``workdir`` is only used when not running as root (root's pytest temp folders are 0700,
    which the ``postgres`` user cannot enter; a folder under the system temp dir is used then).
    """
    reason = postgres_available()
    if reason:
        raise RuntimeError(reason)
    bindir = pg_bindir()
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="hpo-pg-", dir=None if as_root or workdir is None else workdir))
    prefix: list[str] = []
    if as_root:
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, sock, log = base / "data", base / "sock", base / "postgres.log"
    password = secrets.token_hex(12)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")

    def pg(*args: str, check: bool = True, timeout: float = timeout) -> subprocess.CompletedProcess:
        cmd = [*prefix, str(bindir / args[0]), *args[1:]]
        proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n"
                               f"{_tail(log)}")
        return proc

    server: subprocess.Popen | None = None
    try:
        (pwfile := base / "pwfile").write_text(secrets.token_hex(12) + "\n")  # superuser: local trust only
        sock.mkdir(mode=0o700)
        if as_root:
            for path in (pwfile, sock):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        pg("initdb", "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile), "--auth-local=trust",
           "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        # the postmaster runs as our child (in its own session), so it is ours to reap and to stop
        cmd = [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
               "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
               "-c", "full_page_writes=off", "-c", "max_connections=100"]
        with open(log, "ab") as out:
            server = subprocess.Popen(cmd, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + timeout
        while pg("pg_isready", "-q", "-h", str(sock), "-p", str(port), check=False).returncode != 0:
            if server.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"PostgreSQL did not start (exit {server.poll()}):\n{_tail(log)}")
            time.sleep(0.2)
        pg("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(sock), "-p", str(port), "-U", "postgres",
           "-d", "postgres", "-c", f"CREATE ROLE {PG_USER} LOGIN CREATEDB PASSWORD '{password}'",
           "-c", f"CREATE DATABASE {PG_DB} OWNER {PG_USER}")
        yield f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/{PG_DB}"
    finally:
        if server is not None:
            _stop_postgres(pg, data, server)
        shutil.rmtree(base, ignore_errors=True)


def _stop_postgres(pg, data: Path, server: subprocess.Popen) -> None:
    """``pg_ctl -m fast stop``; if the server is still there, SIGQUIT then SIGKILL to its process group."""
    if server.poll() is None:
        with contextlib.suppress(Exception):
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "20", "stop", check=False, timeout=30)
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        try:
            server.wait(10)
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(5)


def create_database(dsn: str, name: str) -> str:
    """Create database ``name`` (owned by the DSN's role) on the server of ``dsn``; returns its DSN."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return dsn.rsplit("/", 1)[0] + f"/{name}"


def sqlalchemy_uri(dsn: str) -> str:
    """``postgresql://...`` -> ``postgresql+psycopg2://...`` (other URIs unchanged)."""
    for scheme in ("postgresql://", "postgres://"):
        if dsn.startswith(scheme):
            return "postgresql+psycopg2://" + dsn[len(scheme):]
    return dsn


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` exits."""
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered:\n"
                               f"{_tail(log) if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last}):\n{_tail(log) if log else ''}")


def stop_process_group(proc: subprocess.Popen, grace: float = 8.0, leader_only: bool = False) -> None:
    """Stop ``proc`` (started with ``start_new_session=True``) and everything in its process group.

    SIGTERM goes to the whole group, or with ``leader_only`` to ``proc`` alone (for a leader that
    shuts its own children down, like ``ray start --block``); whatever is left after ``grace``
    seconds gets SIGKILL.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if leader_only:
                proc.send_signal(signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # the leader may be gone while its workers linger in the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path, timeout: float = 120.0,
                  port: int | None = None, extra_args: tuple[str, ...] | list[str] = ()) -> Iterator[str]:
    """Run ``mlflow server`` on ``backend_uri`` serving artifacts from ``artifacts_dir``; yields its URL.

    A plain ``postgresql://`` DSN (as :func:`postgres_server` yields) is given to MLflow as
    ``postgresql+psycopg2://``: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3.

    Started in its own session, so its uvicorn workers are stopped with it (process group
    TERM, then KILL). Its log is ``artifacts_dir.parent / "mlflow-server.log"``. ``extra_args``
    go to ``mlflow server`` as they are (e.g. ``--allowed-hosts=...``).
    """
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    backend_uri = sqlalchemy_uri(backend_uri)
    log = artifacts_dir.parent / "mlflow-server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(artifacts_dir), "--serve-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *extra_args]
    # no GenAI job runner (a pool of huey consumer processes hpo never uses), as in docker/compose.yaml
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=artifacts_dir.parent, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout, proc=proc, log=log)
        yield url
    finally:
        stop_process_group(proc)


@contextlib.contextmanager
def ray_cluster(workdir: Path | None = None, head_cpus: int = 0, worker_cpus: int = 2,
                token: str | None = None, timeout: float = 180.0) -> Iterator[dict[str, str]]:
    """A Ray head plus one worker node on this machine, with token authentication, like compose's.

    The head offers ``head_cpus`` CPUs (0, as in docker/compose.yaml: trials go to the worker)
    and runs the dashboard / Jobs API; the worker is started through docker/ray_worker.py (the
    image's worker entrypoint) as a CPU-only node with ``worker_cpus`` CPUs. Both use a private
    ``--temp-dir`` and free ports, so another Ray on this machine is neither found nor disturbed.
    ``PATH`` starts with this interpreter's folder, so a job's ``python -m hpo`` is this venv's.

    Yields ``{"address": "http://127.0.0.1:DASH", "gcs": "127.0.0.1:GCS", "env": {...}, "logs": DIR}`` where
    ``env`` holds ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` for clients (pass it to subprocesses;
    it is not put into this process's environment). Each node is stopped with SIGTERM to its
    ``ray start`` (which stops its own processes), then SIGKILL to whatever is left in its group.
    """
    base = Path(tempfile.mkdtemp(prefix="hpo-ray-", dir=None if workdir is None else workdir))
    temp_dir = base / "ray"  # Ray's unix sockets live under it: keep the path short
    token = token or secrets.token_hex(32)
    gcs, dash, agent_head, agent_worker = free_port(), free_port(), free_port(), free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    ray = shutil.which("ray", path=bindir) or shutil.which("ray") or "ray"
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env={**env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        head = start([ray, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                      f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent_head}",
                      f"--num-cpus={head_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
                      "--disable-usage-stats", "--block"], base / "head.log")
        wait_http(f"http://127.0.0.1:{dash}/api/gcs_healthz", timeout, proc=head, log=base / "head.log")
        worker_script = Path(__file__).resolve().parent.parent / "docker" / "ray_worker.py"
        worker = start([sys.executable, str(worker_script), f"--temp-dir={temp_dir}",
                        f"--dashboard-agent-listen-port={agent_worker}"], base / "worker.log",
                       {"RAY_BIN": ray, "RAY_HEAD_ADDRESS": f"127.0.0.1:{gcs}", "GPUS_PER_WORKER": "0",
                        "HPO_GPU_COUNT": "0", "RAY_WORKER_CPUS": str(worker_cpus)})
        wait_http(f"http://127.0.0.1:{agent_worker}/api/local_raylet_healthz", timeout, proc=worker,
                  log=base / "worker.log")
        yield {"address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{gcs}", "env": auth, "logs": str(base)}
    finally:
        for proc in reversed(procs):  # `ray start --block` stops its own processes on SIGTERM
            stop_process_group(proc, grace=15, leader_only=True)
        shutil.rmtree(base, ignore_errors=True)
