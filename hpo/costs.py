"""hpo's cost metrics of a trial (:data:`hpo.selection.COSTS`), measured where it trains.

``n_params`` (one fold model), ``train_seconds`` (the trial's training, all folds),
``peak_memory_mb`` (what the trial added at its peak: on CUDA the memory allocated on its device,
from ``torch.cuda.max_memory_allocated``; on the CPU the process's resident set, its high-water mark
reset at the trial's start through ``/proc/self/clear_refs`` on Linux — with concurrent local trials
the process is shared, so each sees the others' memory too) and, when the study asks for it,
``inference_ms`` (per example: the median of timed forward passes of a batch of 256 training
inputs through the trained model, in eval mode, on the trial's device).
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch

INFERENCE_BATCH = 256
INFERENCE_REPEATS = 5


def rss_kib() -> tuple[int, int] | None:
    """(VmHWM, VmRSS) of this process in KiB, or None where /proc does not tell."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    hwm, rss = re.search(r"VmHWM:\s+(\d+)", text), re.search(r"VmRSS:\s+(\d+)", text)
    return (int(hwm.group(1)), int(rss.group(1))) if hwm and rss else None


def reset_peak_rss() -> None:
    """Reset this process's peak resident set (VmHWM) to the current one ("5" to clear_refs, Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class CostMeter:
    """Started when a trial starts on ``device``; :meth:`measure` gives its cost metrics at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = time.perf_counter()
        self.rss0: int | None = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
        else:
            reset_peak_rss()
            now = rss_kib()
            self.rss0 = now[1] if now else None

    def peak_mb(self) -> float | None:
        """Memory the trial added at its peak, in MiB (None where it cannot be read)."""
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        now = rss_kib()
        if now is None or self.rss0 is None:
            return None
        return max(0, now[0] - self.rss0) / 1024

    def measure(self, model: torch.nn.Module, x: torch.Tensor, *, inference: bool,
                autocast: Any = None) -> dict[str, float]:
        """The cost metrics of a trial whose trained fold ``model`` takes inputs like ``x``."""
        costs = {"n_params": float(sum(p.numel() for p in model.parameters())),
                 "train_seconds": time.perf_counter() - self.started}
        peak = self.peak_mb()
        if peak is not None:
            costs["peak_memory_mb"] = peak
        if inference:
            costs["inference_ms"] = inference_ms(model, x, autocast)
        return costs


def fold_model(learner: Any) -> torch.nn.Module:
    """A fold's trained model (:class:`hpo.training.Learner`): its own, or — when the folds trained as one
    stacked model, which leaves the fold modules' weights on the meta device — a copy holding its best weights."""
    model = learner.model
    if any(p.is_meta for p in model.parameters()):
        import copy

        model = copy.deepcopy(model)
        model.load_state_dict({k: v.to(learner.data.device) for k, v in learner.best_state.items()}, assign=True)
    return model


def inference_ms(model: torch.nn.Module, x: torch.Tensor, autocast: Any = None) -> float:
    """Milliseconds per example of ``model`` on a batch of (up to) 256 rows of ``x``: one warm-up pass, then
    the median of :data:`INFERENCE_REPEATS` timed passes."""
    batch = x[:INFERENCE_BATCH]
    cuda = batch.device.type == "cuda"
    was_training = model.training
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for i in range(INFERENCE_REPEATS + 1):
                if cuda:
                    torch.cuda.synchronize(batch.device)
                t0 = time.perf_counter()
                if autocast is not None:
                    with autocast:
                        model(batch)
                else:
                    model(batch)
                if cuda:
                    torch.cuda.synchronize(batch.device)
                if i:
                    times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000 / len(batch)
