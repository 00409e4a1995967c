"""Fold packing: a trial's k fold models trained as one stacked model (``execution.pack_folds``).

The k fold models of a trial share architecture and hyperparameters and differ only in their
initial weights and data, so their parameters stack along a leading fold dimension
(:func:`torch.func.stack_module_state`) and train as one model under one optimizer: every
optimizer hpo offers acts element by element, so one stacked update is the arithmetic of k
separate ones. What does not stack for free is done per fold, exactly:

- each fold keeps its own initial weights, input/target standardisation, batch order and
  augmentation draws (its :class:`~hpo.training.Learner`'s seed and generator), BatchNorm running
  statistics, best epoch and best-epoch weights;
- gradient clipping uses each fold's own gradient norm;
- a last batch whose size differs between folds (training parts that differ by one example) runs
  fold by fold through :func:`torch.func.functional_call` on views of the stacked weights, so
  BatchNorm sees only the fold's own examples;
- trials the stacked model cannot reproduce run unpacked, and say why (:func:`trial_reason`):
  the ``plateau`` schedule (a learning rate per fold) and folds with different batch counts.

The built-in MLP has a hand-stacked forward (batched matrix products: measured faster than the
generic path on the CPU, see BENCHMARKS.md); every other model runs under :func:`torch.func.vmap`
of :func:`torch.func.functional_call`. :func:`model_reason` checks once per study, on a tiny
batch, that a model stacks at all; one that cannot be vmapped trains unpacked.

Worker side: imports torch, never Optuna, MLflow or Ray.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from hpo.losses import loss_function
from hpo.models import MLP
from hpo.models._layers import Dropout, keep_mask
from hpo.params import PER_BATCH_SCHEDULERS
from hpo.training import EVAL_BATCH, Diverged, Learner, augment_batch, make_optimizer, make_scheduler

Tensors = dict[str, torch.Tensor]
log = logging.getLogger("hpo")


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` convolves anywhere (stacked, its convolutions become grouped ones)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def trial_reason(params: dict[str, Any], learners: Sequence[Learner]) -> str | None:
    """Why this trial's folds cannot train as one stacked model with the same numbers, or ``None``."""
    if params.get("scheduler") == "plateau":
        return "the plateau schedule lowers each fold's learning rate on its own"
    counts = {len(lr.batches) for lr in learners}
    if len(counts) > 1:
        sizes = sorted({len(lr.train_idx) for lr in learners})
        return (f"training parts of {' and '.join(map(str, sizes))} examples give {' and '.join(map(str, sorted(counts)))} "
                f"batches of {int(params['batch_size'])}")
    return None


def _mlp_forward(base: MLP, p: Tensors, b: Tensors, x: torch.Tensor,
                 generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """The built-in MLP on stacked weights: ``(k, B, *input_shape)`` -> ``(k, B, n_outputs)``; fold j's
    dropout masks come from ``generators[j]`` (as an unpacked fold's :class:`~hpo.models._layers.Dropout`)."""
    k, n = x.shape[:2]
    x = x.reshape(k, n, -1)  # (k, B, F)
    for i, m in enumerate(base.body):
        name = f"body.{i}."
        if isinstance(m, nn.Linear):
            w = p[name + "weight"].transpose(1, 2)  # (k, in, out)
            x = torch.bmm(x, w) if m.bias is None else torch.baddbmm(p[name + "bias"].unsqueeze(1), x, w)
        elif isinstance(m, nn.BatchNorm1d):
            # fold j's features sit in columns j*W..(j+1)*W: one BatchNorm over k*W channels is k of them
            width = x.shape[2]
            flat = x.transpose(0, 1).reshape(n, k * width)  # (B, k*W)
            flat = F.batch_norm(flat, b[name + "running_mean"].view(-1), b[name + "running_var"].view(-1),
                                p[name + "weight"].reshape(-1), p[name + "bias"].reshape(-1), m.training,
                                m.momentum, m.eps)
            if m.training:
                b[name + "num_batches_tracked"].add_(1)
            x = flat.view(n, k, width).transpose(0, 1)  # (k, B, W)
        elif isinstance(m, nn.Dropout):
            if m.training and m.p > 0 and all(g is not None for g in generators):
                x = x * torch.stack([keep_mask(x[j], m.p, g) for j, g in enumerate(generators)])
            else:
                x = F.dropout(x, m.p, m.training)
        else:  # an activation: element by element
            x = m(x)
    return torch.baddbmm(p["head.bias"].unsqueeze(1), x, p["head.weight"].transpose(1, 2))  # (k, B, out)


def _fast_path(base: nn.Module, generators: Sequence[torch.Generator | None]
               ) -> Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor] | None:
    """A hand-stacked forward for ``base`` when it is a built-in that has one."""
    if type(base) is MLP and all(m.momentum is not None for m in base.modules() if isinstance(m, nn.BatchNorm1d)):
        return lambda p, b, x: _mlp_forward(base, p, b, x, generators)
    return None


class StackedNet:
    """k copies of one architecture as stacked weights, with one forward for all of them."""

    def __init__(self, nets: Sequence[nn.Module], generic: bool = False) -> None:
        self.k = len(nets)
        # each net's dropout generator (hpo's Dropout), for the paths that can draw fold by fold
        self.generators = [next((m.generator for m in net.modules() if isinstance(m, Dropout)), None) for net in nets]
        params, buffers = stack_module_state(list(nets))
        self.params: Tensors = params
        self.buffers: Tensors = buffers
        self.base = copy.deepcopy(nets[0]).to("meta")  # structure only: the weights live in params/buffers
        if all(g is not None for g in self.generators):
            for m in self.base.modules():
                if isinstance(m, Dropout):  # under vmap, fold j draws from generators[j] (see Dropout)
                    m.generators = self.generators
        fast = None if generic else _fast_path(self.base, self.generators)
        self.fast = fast is not None
        if fast is None:
            def one(p: Tensors, b: Tensors, x: torch.Tensor) -> torch.Tensor:
                return functional_call(self.base, (p, b), (x,))

            self._forward = vmap(one, randomness="different")  # dropout draws its own mask per fold
        else:
            self._forward = fast

    def train(self, mode: bool = True) -> None:
        """Training or eval mode, as ``nn.Module.train``."""
        self.base.train(mode)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(k, B, *input_shape)`` -> ``(k, B, n_outputs)``: fold j's model on ``x[j]``."""
        return self._forward(self.params, self.buffers, x)

    def one(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """Fold ``j``'s model alone on ``x`` ``(B, *input_shape)``, on views of the stacked weights
        (gradients and BatchNorm statistics land in fold j's slice)."""
        p = {n: t[j] for n, t in self.params.items()}
        b = {n: t[j] for n, t in self.buffers.items()}
        drops = [m for m in self.base.modules() if isinstance(m, Dropout)]
        for m in drops:  # fold j's masks from its own stream, as unpacked
            m.generator = self.generators[j]
        try:
            return functional_call(self.base, (p, b), (x,))
        finally:
            for m in drops:
                m.generator = None

    def state(self, j: int) -> Tensors:
        """Fold ``j``'s weights and buffers, under the model's own ``state_dict`` names."""
        return {n: t[j] for n, t in {**self.params, **self.buffers}.items()}


def _clip_per_fold(tensors: Sequence[torch.Tensor], k: int, max_norm: float) -> None:
    """``clip_grad_norm_`` for each fold on its own: fold j's total gradient norm over its slice of every
    stacked tensor (torch's own ``get_total_norm``), and the same scaling torch applies."""
    grads = [t.grad for t in tensors if t.grad is not None]
    for j in range(k):
        mine = [g[j] for g in grads]
        total = torch.nn.utils.get_total_norm(mine, 2.0)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in mine:
            g.mul_(coef)


class PackedFolds:
    """A trial's fold learners trained as one stacked model; same interface as :class:`SequentialFolds`.

    ``learners`` are built as for an unpacked trial (their seeds give each fold its initial weights,
    standardisation, generator and batches); their weights move into one :class:`StackedNet` and the
    best-epoch record (``best_value``, ``best_epoch``, ``best_state``) stays on each learner.
    """

    def __init__(self, learners: Sequence[Learner], epochs: int, generic: bool = False) -> None:
        first = learners[0]
        self.learners = list(learners)
        self.k = k = len(learners)
        self.data = data = first.data
        self.params = first.params
        self.regression = first.regression
        self.augment = first.augment
        self.keys = list(first.model.state_dict().keys())  # a fold's state dict, in the model's own order
        self.net = StackedNet([lr.model.net for lr in learners], generic=generic)
        for lr in learners:  # the stacked copy is the one that trains
            lr.model.net.to("meta")
        self.opt = make_optimizer(first.params, self.net.params.values())
        self.sched = make_scheduler(first.params, self.opt, first.steps_per_epoch, epochs)
        self.autocast = first.autocast
        self.x_mean = torch.stack([lr.model.x_mean for lr in learners]).unsqueeze(1)  # (k, 1, F) or (k, 1, C, 1, 1)
        self.x_std = torch.stack([lr.model.x_std for lr in learners]).unsqueeze(1)
        self.y_mean = torch.stack([lr.model.y_mean for lr in learners]).view(k, 1)
        self.y_std = torch.stack([lr.model.y_std for lr in learners]).view(k, 1)
        self.x_scaled: torch.Tensor | None = None  # (k, N, ...): each fold's standardised copy
        if all(lr.x_scaled is not None for lr in learners):
            self.x_scaled = torch.stack([lr.x_scaled for lr in learners])
            for lr in learners:
                lr.x_scaled = None
        self.rows = torch.arange(k, device=data.device)[:, None]  # (k, 1): fold j's row of x_scaled
        self.loss_fn = loss_function(first.params, self.regression, reduction="none")

    # ------------------------------------------------------------------ batches

    def _inputs(self, idx: torch.Tensor, folds: slice, augment: bool) -> torch.Tensor:
        """Standardised inputs of ``idx`` ``(m, B)`` for the folds ``folds``: ``(m, B, *input_shape)``."""
        if self.x_scaled is not None:
            return self.x_scaled[self.rows[folds], idx]
        x = self.data.x[idx]  # (m, B, ...) raw
        if augment:
            lrs = self.learners[folds]
            x = torch.stack([augment_batch(x[i], lr.gen) for i, lr in enumerate(lrs)])
        return (x.float() - self.x_mean[folds]) / self.x_std[folds]

    def _losses(self, out: torch.Tensor, y: torch.Tensor, folds: slice) -> torch.Tensor:
        """Each fold's mean loss ``(m,)`` of outputs ``(m, B, C)`` against labels ``(m, B)``."""
        m, n = y.shape
        if self.regression:
            target = (y - self.y_mean[folds]) / self.y_std[folds]
            return self.loss_fn(out.squeeze(-1).float(), target).mean(1)
        return self.loss_fn(out.float().reshape(m * n, -1), y.reshape(-1)).view(m, n).mean(1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast is not None:
            with self.autocast:
                return self.net(x)
        return self.net(x)

    def _fold_loss(self, j: int, idx: torch.Tensor) -> torch.Tensor:
        """Fold ``j`` alone on its batch ``idx`` (a ragged last batch): its mean loss, a 0-d tensor."""
        folds = slice(j, j + 1)
        x = self._inputs(idx[None], folds, self.augment)[0]
        if self.autocast is not None:
            with self.autocast:
                out = self.net.one(j, x)
        else:
            out = self.net.one(j, x)
        return self._losses(out[None], self.data.y[idx][None], folds)[0]

    def train_epoch(self) -> list[float]:
        """One pass of every fold over its training part, each in its own fresh order; each fold's mean
        loss. Raises :class:`~hpo.training.Diverged` naming the first fold whose loss is not finite."""
        self.net.train()
        dev, every = self.data.device, slice(None)
        perms = [lr.train_idx[torch.randperm(len(lr.train_idx), generator=lr.gen).to(dev)] for lr in self.learners]
        clip = float(self.params["grad_clip"])
        per_batch_schedule = self.sched is not None and self.params["scheduler"] in PER_BATCH_SCHEDULERS
        bounds = list(zip(*(lr.batches for lr in self.learners), strict=True))  # per batch: each fold's (start, end)
        losses = []
        for per_fold in bounds:
            if len({e - s for s, e in per_fold}) == 1:
                idx = torch.stack([perm[s:e] for perm, (s, e) in zip(perms, per_fold, strict=True)])  # (k, B)
                loss = self._losses(self._forward(self._inputs(idx, every, self.augment)), self.data.y[idx], every)
            else:
                loss = torch.stack([self._fold_loss(j, perm[s:e])
                                    for j, (perm, (s, e)) in enumerate(zip(perms, per_fold, strict=True))])
            self.opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # fold j's loss reaches only fold j's slice of every weight
            if clip > 0:
                _clip_per_fold(list(self.net.params.values()), self.k, clip)
            self.opt.step()
            if per_batch_schedule:
                self.sched.step()
            losses.append(loss.detach())
        per_batch = torch.stack(losses).float()  # (batches, k)
        means = []
        for j, lr in enumerate(self.learners):
            sizes = torch.tensor([float(e - s) for s, e in lr.batches], device=dev)
            means.append(float(per_batch[:, j].contiguous() @ sizes) / len(lr.train_idx))
        for j, value in enumerate(means):
            if not math.isfinite(value):
                raise Diverged(f"training loss became {value}", fold=j)
        return means

    @torch.inference_mode()
    def validate(self, val_idx: Sequence[torch.Tensor]) -> list[tuple[np.ndarray, float]]:
        """Each fold's outputs on its validation indices (probabilities, or predictions in target
        units) and mean loss. Folds with fewer examples are padded with their first one, then cut."""
        self.net.train(False)
        lens = [len(v) for v in val_idx]
        width = max(lens)
        padded = torch.stack([torch.cat([v, v[:1].expand(width - len(v))]) for v in val_idx])  # (k, V)
        step = max(1, EVAL_BATCH // self.k)
        every = slice(None)
        outs = [self._forward(self._inputs(padded[:, s:s + step], every, False)).float() for s in range(0, width, step)]
        out = torch.cat(outs, dim=1)  # (k, V, C)
        results = []
        for j, (v, n) in enumerate(zip(val_idx, lens, strict=True)):
            o = out[j, :n]
            loss = float(self._losses(o[None], self.data.y[v][None], slice(j, j + 1))[0])
            if self.regression:
                pred = o.squeeze(-1) * self.y_std[j, 0] + self.y_mean[j, 0]
            else:
                pred = torch.softmax(o, dim=1)
            results.append((pred.cpu().numpy(), loss))
        return results

    def end_epoch(self, epoch: int, values: Sequence[float], val_losses: Sequence[float]) -> None:
        """Step the (shared) schedule; each fold whose ``value`` is its best keeps its weights."""
        if self.sched is not None and self.params["scheduler"] not in PER_BATCH_SCHEDULERS:
            self.sched.step()
        for j, (lr, value) in enumerate(zip(self.learners, values, strict=True)):
            lr.offer(epoch, value, lambda j=j: self.fold_state(j))

    def fold_state(self, j: int) -> dict[str, torch.Tensor]:
        """Fold ``j``'s model as an ordinary ``Standardized`` state dict on the CPU (what an unpacked
        fold saves: a checkpoint does not know it was packed)."""
        stacked = self.net.state(j)
        lr = self.learners[j]
        own = {"x_mean": lr.model.x_mean, "x_std": lr.model.x_std, "y_mean": lr.model.y_mean, "y_std": lr.model.y_std}
        return {key: (own[key] if key in own else stacked[key[4:]]).detach().to("cpu", copy=True) for key in self.keys}


def model_reason(build: Callable[[], nn.Module], input_shape: tuple[int, ...], n_outputs: int,
                 device: str = "cpu") -> str | None:
    """Why a model from ``build`` cannot train stacked, or ``None``: two copies take one training step
    and one eval pass on a tiny batch under :func:`torch.func.vmap`, and the eval outputs must match
    each copy's own. Torch's global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        try:
            nets = [build().to(device) for _ in range(2)]
            for i, net in enumerate(nets):
                torch.manual_seed(i)
                for t in net.parameters():
                    t.data.normal_(0, 0.1)
            x = torch.randn((2, 4, *input_shape), device=device)
            stacked = StackedNet(nets, generic=True)
            stacked.train()
            out = stacked(x)
            out.float().sum().backward()
            stacked.train(False)
            with torch.no_grad():
                together = stacked(x)
                for net in nets:
                    net.eval()
                alone = torch.stack([net(x[i]) for i, net in enumerate(nets)])
        except Exception as exc:  # the user's model: any error is a reason not to stack it
            text = " ".join(str(exc).split())[:300]
            return f"torch.func.vmap cannot run it ({type(exc).__name__}: {text})"
    if tuple(together.shape) != (2, 4, n_outputs) or not torch.allclose(together, alone, rtol=1e-4, atol=1e-5):
        return "under torch.func.vmap its outputs differ from the model's own (state or control flow that vmap does not see)"
    return None


def study_packing(spec: Any, input_shape: tuple[int, ...], n_outputs: int, device: str) -> tuple[bool, str]:
    """Whether a study's trials pack their folds, and what the parent run's ``hpo.packed`` tag says
    (``"true"``, or ``"false: <why>"``); checked once per study, on the CPU, before any trial.

    ``pack_folds: auto`` packs every model that stacks on CUDA, and on the CPU only models without
    convolutions (grouped convolutions run slower there, see BENCHMARKS.md). Raises
    :class:`~hpo.errors.SpecError` for ``pack_folds: true`` and a model that cannot stack.
    """
    from hpo.errors import SpecError
    from hpo.models import BUILTIN_FACTORIES, build_model
    from hpo.models._check import first_params

    mode = spec.execution.pack_folds
    if getattr(spec, "objective", None) is not None:
        return False, "false: a user objective trains each fold itself"
    if mode is False:
        return False, "false: execution.pack_folds is false"
    params = first_params(spec)
    shape = tuple(int(s) for s in input_shape)

    def build() -> nn.Module:
        return build_model(spec.model, input_shape=shape, n_outputs=n_outputs, params=params, spec_path=spec.path)

    reason = None if spec.model in BUILTIN_FACTORIES else model_reason(build, shape, n_outputs)
    if reason is not None:
        if mode is True:
            raise SpecError([("execution.pack_folds", f"is true, but model {spec.model} cannot train its folds stacked: "
                                                      f"{reason}; set pack_folds: auto (or false) to train them one by one")],
                            spec.path)
        log.warning("model %s trains its folds one by one: %s", spec.model, reason)
        return False, f"false: {reason}"
    if mode == "auto" and device == "cpu":
        with torch.random.fork_rng(devices=[]):
            conv = has_convolutions(build())
        if conv:
            return False, "false: a convolutional model on the CPU (stacked it trains slower; pack_folds: true packs it anyway)"
    return True, "true"
