"""Your own training step (README "Your own training step"): a two-input model on a torch Dataset,
trained with a focal loss, gradient accumulation and an exponential moving average of its weights.

Each item of :class:`DigitViews` is two views of one handwritten digit, the 8x8 image and its 16 row
and column ink profiles, and its label. :func:`fit_fold` trains :class:`TwoView` (a small CNN on the
image, an MLP on the profiles, one head) on one fold; hpo runs it on every fold of every trial, prunes
on the fold mean of what it reports, and calls it once more on all training data for the refit.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import hpo


class DigitViews(Dataset):
    """scikit-learn's digits as ``((image, profiles), label)`` items."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        img = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        self.images = img
        self.profiles = torch.cat([img.sum(dim=3).flatten(1), img.sum(dim=2).flatten(1)], dim=1) / 8.0
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return (self.images[i], self.profiles[i]), self.labels[i]


def load() -> tuple[DigitViews, np.ndarray]:
    """The data factory: the Dataset and its labels (hpo draws the stratified folds and test split from them)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return DigitViews(x, y), y


class TwoView(nn.Module):
    def __init__(self, channels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten())
        self.profiles = nn.Sequential(nn.Linear(16, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels + hidden, 10))

    def forward(self, views):
        image, profiles = views
        return self.head(torch.cat([self.image(image), self.profiles(profiles)], dim=1))


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Cross-entropy that weighs down the examples the model already gets right (gamma 0: plain cross-entropy)."""
    logp = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def accuracy(model: nn.Module, data) -> float:
    model.eval()
    right = 0
    with torch.no_grad():
        for views, y in DataLoader(data, batch_size=512):
            right += int((model(views).argmax(1) == y).sum())
    return right / len(data)


def fit_fold(params: dict, fold: hpo.Fold, ctx: hpo.TrialContext) -> dict[str, float]:
    model = TwoView(params["channels"], params["hidden"], params["dropout"]).to(ctx.device)
    ema = copy.deepcopy(model)  # the weights kept and scored: an exponential moving average
    opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    batches = DataLoader(fold.train, batch_size=params["batch_size"], shuffle=True)
    best, loss = -1.0, torch.tensor(0.0)
    for epoch in range(1, params["epochs"] + 1):
        model.train()
        for step, (views, y) in enumerate(batches, start=1):
            loss = focal_loss(model(views), y, params["gamma"]) / params["accum_steps"]
            loss.backward()
            if step % params["accum_steps"] == 0 or step == len(batches):
                opt.step()
                opt.zero_grad()
                with torch.no_grad():
                    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                        e.lerp_(p, 1 - params["ema"])
        if ctx.refit:  # all training data, no validation part: train for the epochs hpo chose
            continue
        acc = accuracy(ema, fold.val)
        if acc > best:
            best = acc
            ctx.save(ema)
        if ctx.report(epoch, {"val_accuracy": acc, "train_loss": float(loss) * params["accum_steps"]}) is not hpo.GO:
            break  # pruned, or the study is stopping
    if ctx.refit:
        ctx.save(ema)
    return {"val_accuracy": best}


def evaluate(model: nn.Module, test) -> dict[str, float]:
    """The refit model's test metrics (objective.evaluate): hpo calls it once with the held-out split."""
    return {"accuracy": accuracy(model, test)}
