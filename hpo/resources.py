"""What a trial used, measured where it runs: the ``sys/*`` metrics of its child run.

Per epoch (logged with the curves): ``sys/epoch_seconds`` (wall seconds since the previous epoch's
report; the first includes building the fold models) and ``sys/examples_per_second`` (training
examples of all folds in that epoch over those seconds). Per trial: ``sys/peak_rss_mb`` (the
process's resident-set high-water mark since the trial started), ``sys/cpu_seconds`` (the process's
CPU time, all threads, over the trial), and on CUDA ``sys/gpu_peak_memory_mb``
(``torch.cuda.max_memory_allocated`` on the trial's device, reset when it starts) and, when NVML is
installed (``pip install 'hpo[gpu]'``: ``nvidia-ml-py``), ``sys/gpu_utilization`` (the mean of
samples every 0.5 s, percent). On Ray a worker holds one trial, so every figure is that trial's;
locally, concurrent trials are threads of one process, so the per-process figures (RSS, CPU
seconds, GPU utilisation) include the other trials running at the same time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from hpo.costs import reset_peak_rss, rss_kib
from hpo.trial import Verdict

NVML_INTERVAL_S = 0.5


class _Utilization(threading.Thread):
    """Samples NVML's GPU utilisation of one device until stopped."""

    def __init__(self, index: int) -> None:
        super().__init__(name="hpo-nvml", daemon=True)
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.samples: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(NVML_INTERVAL_S):
            try:
                self.samples.append(float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
            except Exception:  # noqa: BLE001 - a sample lost is not worth a failed trial
                pass

    def mean(self) -> float | None:
        self.done.set()
        self.join(timeout=2 * NVML_INTERVAL_S)
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110
            pass
        return sum(self.samples) / len(self.samples) if self.samples else None


def _nvml(device: torch.device) -> _Utilization | None:
    if device.type != "cuda":
        return None
    try:
        sampler = _Utilization(torch.cuda.current_device() if device.index is None else device.index)
    except Exception:  # noqa: BLE001 - nvidia-ml-py not installed, or no NVML driver library
        return None
    sampler.start()
    return sampler


class ResourceMeter:
    """Started when a trial starts on ``device`` (``examples``: training rows of all folds per epoch)."""

    def __init__(self, device: torch.device | str, examples: int) -> None:
        self.device = torch.device(device)
        self.examples = examples
        self.started = self.last = time.perf_counter()
        self.cpu0 = time.process_time()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        self.utilization = _nvml(self.device)

    def wrap(self, on_epoch: Any) -> Any:
        """``on_epoch`` with this epoch's ``sys/epoch_seconds`` and ``sys/examples_per_second`` added."""

        def timed(epoch: int, metrics: dict[str, float]) -> Any:
            now = time.perf_counter()
            seconds, self.last = now - self.last, now
            metrics = {**metrics, "sys/epoch_seconds": seconds}
            if seconds > 0 and self.examples:
                metrics["sys/examples_per_second"] = self.examples / seconds
            return Verdict.GO if on_epoch is None else on_epoch(epoch, metrics)

        return timed

    def finish(self) -> dict[str, float]:
        """The trial's ``sys/*`` totals (what cannot be read here is left out)."""
        out = {"sys/cpu_seconds": time.process_time() - self.cpu0}
        rss = rss_kib()
        if rss is not None:
            out["sys/peak_rss_mb"] = rss[0] / 1024
        if self.device.type == "cuda":
            out["sys/gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.utilization is not None:
            mean = self.utilization.mean()
            if mean is not None:
                out["sys/gpu_utilization"] = mean
        return out


def study_compute(results: list[Any], busy: list[tuple[float, float]], wall_s: float,
                  gpu_share: float) -> dict[str, float]:
    """The parent run's ``study/*`` metrics of one ``hpo run``: ``study/trial_seconds`` (its trials' seconds,
    summed), ``study/gpu_seconds`` (seconds of the trials that ran on a GPU, times the share of a GPU each
    held: ``gpu_share``), ``study/wall_seconds`` and ``study/training_share`` (the part of the wall time in
    which at least one trial was running; the rest is set-up, bookkeeping, the refit and the report)."""
    busy_s, end = 0.0, float("-inf")
    for start, stop in sorted(busy):  # the union of the trials' intervals
        if stop > end:
            busy_s += stop - max(start, end)
            end = stop
    gpu = sum(r.duration_s for r in results if " cuda " in f" {r.worker or ''} ") * gpu_share
    out = {"study/trial_seconds": sum(r.duration_s for r in results), "study/wall_seconds": wall_s,
           "study/training_share": min(1.0, busy_s / wall_s) if wall_s > 0 else 0.0}
    if gpu:
        out["study/gpu_seconds"] = gpu
    return out
