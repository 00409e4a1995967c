"""The model-independent training loop.

A :class:`Learner` owns one model, its optimizer and schedule, and the normalisation
statistics of its own training indices. It knows nothing about MLP vs ResNet and nothing
about Optuna or MLflow: it trains an epoch, predicts, and remembers its best epoch.
Data stays in device tensors; a batch is an index gather, never a Python-side copy.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hpo.losses import loss_function
from hpo.metrics import compute_metric, is_better
from hpo.models import build_model
from hpo.models._layers import Dropout
from hpo.params import PER_BATCH_SCHEDULERS

log = logging.getLogger("hpo")

EVAL_BATCH = 4096  # examples per forward pass when predicting (no gradients)
PRESCALE_MAX_VALUES = 2**24  # inputs up to this many values (64 MB as float32) are standardised once
_INIT_LOCK = threading.Lock()  # torch's global RNG seeds model init; trials may run in threads


class Standardized(nn.Module):
    """A network with its input standardisation (and, for regression, target scaling) built in.

    ``forward`` takes raw inputs (uint8 images or float features) and returns logits
    (classification) or predictions in target units (regression); this is what is saved,
    logged to MLflow and served.
    """

    def __init__(self, net: nn.Module, x_mean: torch.Tensor, x_std: torch.Tensor,
                 regression: bool = False, y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.regression = regression
        self.register_buffer("x_mean", x_mean.float())
        self.register_buffer("x_std", x_std.float())
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Network output in training space (standardised targets for regression)."""
        return self.net((x.float() - self.x_mean) / self.x_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scaled(x)
        if self.regression:
            return out.squeeze(-1) * self.y_std + self.y_mean  # (B,)
        return out  # (B, n_classes)


def fit_stats(x: torch.Tensor, idx: torch.Tensor, enabled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``x[idx]``: per feature for (N, F), per channel for (N, C, H, W).

    ``enabled=False`` (``data.standardize: false``): zeros and ones of the same shapes, so the
    inputs reach the network unchanged and a saved model has the same buffers either way.
    """
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    if not enabled:
        shape = (x.shape[1],) + (1,) * (x.dim() - 2)  # (F,) or (C, 1, 1), as the fitted stats
        return torch.zeros(shape, device=x.device), torch.ones(shape, device=x.device)
    part = x[idx].float()
    mean = part.mean(dim=dims, keepdim=True)[0]
    std = part.std(dim=dims, keepdim=True)[0]
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # constant features stay as they are
    return mean, std


def make_optimizer(params: dict[str, Any], tensors: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer named by ``params['optimizer']`` over ``tensors`` (a model's
    parameters, or a packed trial's stacked ones: every optimizer here acts element by element)."""
    name, lr, wd = params["optimizer"], params["lr"], params["weight_decay"]
    p = list(tensors)
    if name == "sgd":
        mom = params["momentum"]
        return torch.optim.SGD(p, lr=lr, momentum=mom, nesterov=bool(params["nesterov"]) and mom > 0, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(p, lr=lr, momentum=params["momentum"], weight_decay=wd)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
           "adadelta": torch.optim.Adadelta, "adamax": torch.optim.Adamax}[name]
    return cls(p, lr=lr, weight_decay=wd)


def make_scheduler(params: dict[str, Any], opt: torch.optim.Optimizer, steps_per_epoch: int, epochs: int):
    """The learning-rate schedule named by ``params['scheduler']`` (``None`` for constant)."""
    name = params["scheduler"]
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=params["lr"], total_steps=max(2, epochs * steps_per_epoch))
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=max(1, epochs // 10))
    if name == "cyclic":  # Smith (2017), triangular; per batch, a cycle of cycle_epochs epochs
        half = max(1, round(params["cycle_epochs"] * steps_per_epoch / 2))
        return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=params["lr"] / params["cyclic_ratio"], max_lr=params["lr"],
                                                 step_size_up=half, mode="triangular", cycle_momentum=False)
    if name == "sgdr":  # Loshchilov & Hutter (2016): cosine annealing with warm restarts, per batch
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=max(1, params["restart_epochs"] * steps_per_epoch), T_mult=int(params["restart_mult"]))
    return None


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero pad 1/8 of the side) and, for 3-channel images, horizontal flip."""
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    xp = nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device="cpu").to(x.device)
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (B, W)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)  # (B, C, H*W)
    out = torch.gather(xp.reshape(b, c, hp * wp), 2, flat).reshape(b, c, h, w)  # (B, C, H, W)
    if c == 3:  # flipping digits changes their meaning; natural images keep theirs
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out.contiguous()


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (``fold``: which fold's, when known)."""

    def __init__(self, message: str, fold: int | None = None) -> None:
        super().__init__(message)
        self.fold = fold


@dataclass
class Data:
    """A dataset's training (or test) tensors on the device a trial trains on."""

    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    device: torch.device
    standardize: bool = True  # data.standardize: a learner fits the input mean/std of its training indices

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, n_classes: int, device: torch.device | str,
                    standardize: bool = True) -> Data:
        """Move arrays to ``device`` once (uint8 images stay uint8 to save memory)."""
        dev = torch.device(device)
        # arrays from Ray's object store are read-only; torch wants its own copy of those
        xt = torch.as_tensor(x if x.flags.writeable else x.copy()).to(dev)
        yt = torch.as_tensor(y if y.flags.writeable else y.copy()).to(dev)
        yt = yt.long() if n_classes else yt.float()
        return cls(xt, yt, n_classes, dev, standardize)

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` normalises over the batch anywhere (BatchNorm layers of any dimension)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


_MERGE_NOTED: set[tuple[int, int]] = set()


def batch_bounds(n: int, batch_size: int, batch_norm: bool) -> list[tuple[int, int]]:
    """``(start, end)`` of each batch of an epoch over ``n`` examples.

    BatchNorm cannot train on a batch of one example (its variance is undefined and torch
    raises), so with BatchNorm a last batch of one is merged into the batch before it (said
    once per size in the log). Without BatchNorm the batches are exactly ``batch_size``.
    """
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if batch_norm and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
        if (n, batch_size) not in _MERGE_NOTED:
            _MERGE_NOTED.add((n, batch_size))
            log.warning("batch_size %d leaves a last batch of 1 of %d examples, which BatchNorm cannot train on; "
                        "it is merged into the batch before it", batch_size, n)
    return bounds


class Learner:
    """Trains one model on ``train_idx`` of ``data``; tracks the best epoch on its validation set."""

    def __init__(self, data: Data, train_idx: torch.Tensor, model_name: str, params: dict[str, Any],
                 seed: int, direction: str, epochs: int) -> None:
        self.data = data
        self.train_idx = train_idx.to(data.device)
        self.params = params
        self.direction = direction
        self.regression = data.n_classes == 0
        cuda = data.device.type == "cuda"
        x_mean, x_std = fit_stats(data.x, self.train_idx, data.standardize)
        y_mean, y_std = 0.0, 1.0
        if self.regression:
            yt = data.y[self.train_idx]
            y_mean, y_std = float(yt.mean()), float(yt.std().clamp_min(1e-6))
        with _INIT_LOCK:
            torch.manual_seed(seed)
            net = build_model(model_name, input_shape=tuple(data.x.shape[1:]),
                              n_outputs=data.n_classes or 1, params=params)
        self.model = Standardized(net, x_mean, x_std, self.regression, y_mean, y_std).to(data.device)
        self.augment = bool(params["augment"]) and data.is_image
        # small data: standardise every example once instead of every batch (two element-wise ops per batch,
        # a measurable share of an epoch of a small model). Large image sets stay uint8 on the device and
        # are scaled per batch, as are augmented ones (a crop pads raw pixels with black)
        self.x_scaled: torch.Tensor | None = None
        if not self.augment and data.x.numel() <= PRESCALE_MAX_VALUES:
            self.x_scaled = (data.x.float() - self.model.x_mean) / self.model.x_std
        self.channels_last = cuda and data.is_image
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else None
        self.gen = torch.Generator().manual_seed(seed)  # batch order and augmentation draws
        # dropout masks: a stream of this fold's own, on the device, that no other fold, thread or packing shifts
        self.noise_gen = torch.Generator(device=data.device).manual_seed(seed)
        for m in self.model.modules():
            if isinstance(m, Dropout):
                m.generator = self.noise_gen
        self.batch_size = int(params["batch_size"])
        self.batches = batch_bounds(len(self.train_idx), self.batch_size, has_batch_norm(self.model))
        self.steps_per_epoch = len(self.batches)
        self.opt = make_optimizer(params, self.model.parameters())
        self.sched = make_scheduler(params, self.opt, self.steps_per_epoch, epochs)
        self.clip = float(params["grad_clip"])
        self.sched_per_batch = self.sched is not None and params["scheduler"] in PER_BATCH_SCHEDULERS
        self.loss_fn = loss_function(params, self.regression)
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.model.y_mean) / self.model.y_std if self.regression else y

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return self.loss_fn(out.squeeze(-1).float(), self._target(y))
        return self.loss_fn(out.float(), y)

    def train_epoch(self) -> float:
        """One pass over the training indices in a fresh random order; returns the mean loss."""
        self.model.train()
        perm = self.shuffled()
        losses = [self.batch_step(perm[start:end]) for start, end in self.batches]  # summed once after the epoch
        # batches differ in size only at the end: weight the batch means by their sizes
        sizes = torch.tensor([float(end - start) for start, end in self.batches], device=self.data.device)
        mean_loss = float(torch.stack(losses).float() @ sizes) / len(perm)
        if not math.isfinite(mean_loss):
            raise Diverged(f"training loss became {mean_loss}")
        return mean_loss

    def shuffled(self) -> torch.Tensor:
        """The training indices in a fresh random order from this learner's generator."""
        return self.train_idx[torch.randperm(len(self.train_idx), generator=self.gen).to(self.data.device)]

    def batch_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimisation step on the training examples ``idx`` (augmented, clipped and in mixed
        precision where this learner is; a per-batch schedule steps too): the batch's mean loss,
        detached, on the device. The model must be in training mode."""
        if self.x_scaled is None:
            forward, xb = self.model.scaled, self.data.x[idx]
        else:
            forward, xb = self.model.net, self.x_scaled[idx]
        yb = self.data.y[idx]
        if self.augment:
            xb = augment_batch(xb, self.gen)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        if self.autocast is not None:
            with self.autocast:
                loss = self._loss(forward(xb), yb)
        else:
            loss = self._loss(forward(xb), yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        if self.sched_per_batch:
            self.sched.step()
        return loss.detach()

    @torch.inference_mode()
    def predict(self, data: Data, idx: torch.Tensor | None = None) -> tuple[np.ndarray, float]:
        """Outputs for ``data.x[idx]`` (probabilities or target-unit predictions) and the mean loss."""
        self.model.eval()
        n = len(data.x) if idx is None else len(idx)
        outs, loss_sum = [], 0.0
        prescaled = self.x_scaled is not None and data is self.data
        forward, x = (self.model.net, self.x_scaled) if prescaled else (self.model.scaled, data.x)
        for start in range(0, n, EVAL_BATCH):
            sel = slice(start, start + EVAL_BATCH)
            xb = x[sel] if idx is None else x[idx[sel]]
            yb = data.y[sel] if idx is None else data.y[idx[sel]]
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            if self.autocast is not None:
                with self.autocast:
                    out = forward(xb).float()
            else:
                out = forward(xb).float()
            loss_sum += float(self._loss(out, yb)) * len(yb)
            if self.regression:
                outs.append((out.squeeze(-1) * self.model.y_std + self.model.y_mean).cpu())
            else:
                outs.append(torch.softmax(out, dim=1).cpu())
        return torch.cat(outs).numpy(), loss_sum / max(1, n)

    def step_schedule(self, loss: float) -> None:
        """Advance a per-epoch learning-rate schedule (``plateau`` watches ``loss``)."""
        if self.sched is not None:
            if self.params["scheduler"] == "plateau":
                self.sched.step(loss)
            elif self.params["scheduler"] not in PER_BATCH_SCHEDULERS:
                self.sched.step()

    def end_epoch(self, epoch: int, value: float, val_loss: float) -> bool:
        """Step the schedule; remember the weights if ``value`` is this learner's best. True if it is."""
        self.step_schedule(val_loss)
        return self.offer(epoch, value,
                          lambda: {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()})

    def offer(self, epoch: int, value: float, state: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Keep ``state()`` (CPU weights) as this fold's best when ``value`` beats its best so far. True if it does."""
        if is_better(value, self.best_value, self.direction):
            self.best_value, self.best_epoch = value, epoch
            self.best_state = state()
            return True
        return False


def evaluate(learner: Learner, data: Data, metrics: list[str]) -> dict[str, float]:
    """Every metric in ``metrics`` of ``learner``'s model on all of ``data``."""
    out, _ = learner.predict(data)
    y = data.y.cpu().numpy()
    return {m: compute_metric(m, y, out, data.n_classes) for m in metrics}
