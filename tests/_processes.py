"""Start and stop the processes a test needs, by PID / process group only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group started with ``start_new_session=True``, then SIGKILL what is left."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if sig == signal.SIGTERM:
            time.sleep(grace)  # `ray start --block` leaves children behind a TERM to the group


def ray_head(tmp: Path, env: dict[str, str], num_cpus: int = 2) -> tuple[subprocess.Popen, str, str]:
    """``ray start --head --block`` in its own session; returns (process, GCS address, Jobs API URL)."""
    port, dash, agent = free_port(), free_port(), free_port()
    log = open(tmp / "ray-head.log", "w")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", "--include-dashboard=true", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={agent}"],
        cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    import urllib.error
    import urllib.request

    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited: {(tmp / 'ray-head.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # 401: up, and token auth is on
            break
        except OSError:
            time.sleep(1)
    else:
        stop_group(proc)
        raise RuntimeError("ray head did not answer in 90 s")
    return proc, f"127.0.0.1:{port}", url
