#!/usr/bin/env python3
"""Start a Ray worker node that owns its own share of this host's GPUs.

``docker compose up --scale ray-worker=N`` starts N identical worker containers, and each
sees every GPU of the host (Docker does not hand out different GPUs to replicas of one
service). So that N workers on a G-GPU host do not all claim GPU 0, each worker takes one
of G / GPUS_PER_WORKER *slots* by holding an exclusive ``flock`` on
``$HPO_GPU_SLOTS_DIR/gpu-slot-K.lock`` (a volume shared by the workers of one host),
restricts itself to that slot's GPUs with ``CUDA_VISIBLE_DEVICES``, and then becomes
``ray start --address HEAD --num-gpus GPUS_PER_WORKER --block``. The lock lives as long
as the worker: a container that stops frees its slot for the next one.

Environment (all optional):

  RAY_HEAD_ADDRESS   the head's GCS address (default ``ray-head:6379``)
  GPUS_PER_WORKER    GPUs per worker node (default 1; 0 = a CPU-only worker)
  RAY_WORKER_CPUS    CPUs the worker offers to Ray (default: the host's CPUs / number of slots)
  HPO_GPU_SLOTS_DIR  where the slot locks live (default ``/var/lib/hpo/gpu-slots``)
  HPO_GPU_COUNT      GPUs on this host (default: counted from ``/dev/nvidia<N>``)
  RAY_BIN            the ``ray`` executable (default ``ray`` on PATH)

Extra command-line arguments are passed on to ``ray start``. Exit status 3: no free slot
(more workers than GPUs / GPUS_PER_WORKER on this host).
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import sys


def gpu_count() -> int:
    if os.environ.get("HPO_GPU_COUNT", "").strip():
        return int(os.environ["HPO_GPU_COUNT"])
    return sum(1 for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p))


def claim_slot(slots_dir: str, n_slots: int) -> tuple[int, int] | None:
    """Lock the first free slot; returns ``(slot, fd)`` (the fd must stay open) or ``None``."""
    os.makedirs(slots_dir, exist_ok=True)
    for slot in range(n_slots):
        fd = os.open(os.path.join(slots_dir, f"gpu-slot-{slot}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.uname().nodename} pid {os.getpid()}\n".encode())
        return slot, fd
    return None


def main(argv: list[str]) -> int:
    head = os.environ.get("RAY_HEAD_ADDRESS", "ray-head:6379")
    per = int(os.environ.get("GPUS_PER_WORKER", "1") or 1)
    cpus_env = os.environ.get("RAY_WORKER_CPUS", "").strip()
    total = gpu_count()
    env = dict(os.environ)
    if per <= 0 or total == 0:
        if per > 0:
            print("hpo-ray-worker: no GPU visible (/dev/nvidia<N>); starting a CPU-only worker", file=sys.stderr)
        gpus, n_slots, label = 0, 1, "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        n_slots = total // per
        if n_slots == 0:
            print(f"hpo-ray-worker: GPUS_PER_WORKER={per} but this host has {total} GPU(s)", file=sys.stderr)
            return 2
        claimed = claim_slot(os.environ.get("HPO_GPU_SLOTS_DIR", "/var/lib/hpo/gpu-slots"), n_slots)
        if claimed is None:
            print(f"hpo-ray-worker: all {n_slots} GPU slot(s) of this host are taken ({total} GPU(s), "
                  f"GPUS_PER_WORKER={per}); scale ray-worker down to {n_slots}", file=sys.stderr)
            return 3
        slot, fd = claimed
        os.set_inheritable(fd, True)  # held across exec: the slot is ours while ray runs
        devices = list(range(slot * per, slot * per + per))
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        gpus, label = per, f"slot {slot}, GPU(s) {env['CUDA_VISIBLE_DEVICES']}"
    cpus = int(cpus_env) if cpus_env else max(1, (os.cpu_count() or 1) // n_slots)
    ray = os.environ.get("RAY_BIN") or shutil.which("ray") or "ray"
    cmd = [ray, "start", f"--address={head}", f"--num-gpus={gpus}", f"--num-cpus={cpus}",
           "--disable-usage-stats", "--block", *argv]
    print(f"hpo-ray-worker: {label}, {cpus} CPU(s): {' '.join(cmd)}", file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
