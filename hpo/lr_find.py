"""The learning-rate range test (Smith 2017, "Cyclical learning rates for training neural networks";
the sweep fastai's ``lr_find`` and Lightning's ``Tuner.lr_find`` run): train the spec's model on the
first fold's training part, one batch per step, raising the rate geometrically from ``min_lr`` to
``max_lr``, and read where the loss falls fastest.

:func:`sweep` runs it and returns a :class:`RangeTest`; :func:`plot` draws the curve;
:func:`log_run` records it as an MLflow run of its own (``hpo.role = lr_find``) in the study's
experiment; :func:`spec_with_range` writes a copy of the spec searching the suggested range.
``hpo lr-find`` (:mod:`hpo.cli.lr_find`) is the command.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpo.errors import HpoError
from hpo.spec import Choice, Fixed, Range, Spec

SMOOTHING_WINDOW = 0.1  # the loss's moving average spans this share of the sweep's steps
DIVERGE_FACTOR = 4.0  # the sweep stops once the smoothed loss is this many times its minimum


@dataclass(frozen=True)
class RangeTest:
    """What one sweep measured and suggests.

    ``rates[i]`` is the learning rate of step ``i``, ``losses[i]`` its batch's loss and ``smoothed[i]``
    the losses' zero-phase moving average there (forwards, then backwards: no lag behind the rate). ``steepest`` is the rate where the smoothed loss falls fastest
    against ``log(rate)`` (searched up to its minimum, at ``minimum``); ``low`` is a decade below it.
    ``diverged_at`` is the rate where the sweep stopped because the loss left ``DIVERGE_FACTOR`` times
    its minimum (in a forward moving average: the sweep cannot look ahead) or stopped being finite
    (``None``: it reached ``max_lr``).
    """

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    steepest: float
    low: float
    minimum: float
    diverged_at: float | None
    seed: int
    params: dict[str, Any] = field(default_factory=dict)


def sweep_params(spec: Spec) -> dict[str, Any]:
    """The parameters the sweep trains with: fixed values and defaults; a searched parameter at its
    default where that lies in its range or choices, else at the middle of its range (geometric for
    ``log``) or its first choice. The schedule is constant: the sweep sets the rate itself."""
    params = spec.fixed_params()
    for p in spec.space:
        if isinstance(p, Fixed):
            continue
        default = params.get(p.name)
        if isinstance(p, Choice):
            params[p.name] = default if default in p.choices else p.choices[0]
        elif isinstance(p, Range):
            if default is not None and not isinstance(default, bool) and p.low <= default <= p.high:
                continue
            mid = math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2
            params[p.name] = int(round(mid)) if p.is_int else mid
    params["scheduler"] = "constant"
    return params


def sweep(spec: Spec, *, min_lr: float = 1e-7, max_lr: float = 10.0, steps: int = 100, seed: int | None = None,
          device: str = "cpu") -> RangeTest:
    """Run the range test for ``spec`` (its model, data, optimizer and other parameters) on ``device``.

    Seeded by ``seed`` (default ``search.seed``): the same arguments give the same curve. The folds
    are the study's own (``search.seed``), the sweep trains on the first one's training part.
    Raises :class:`~hpo.errors.HpoError` for a user objective (it trains its own way) and when the
    loss never falls (the range starts too high, or the model cannot learn the data).
    """
    import torch

    from hpo.data import load_spec_dataset
    from hpo.folds import make_folds
    from hpo.training import Data, Learner

    if spec.is_objective:
        raise HpoError(f"{spec.path}: objective: the range test trains hpo's own models (model:); a user "
                       "objective trains its own way: run a short study over lr instead")
    seed = spec.search.seed if seed is None else seed
    ds = load_spec_dataset(spec)
    folds = make_folds(ds.y_train, spec.cv.folds, spec.search.seed, spec.task == "classification", ds.class_names)
    data = Data.from_arrays(np.asarray(ds.x_train), np.asarray(ds.y_train), ds.n_classes, device,
                            standardize=spec.data.standardize)
    train_idx = torch.as_tensor(np.asarray(folds[0][0]).copy())
    params = sweep_params(spec)
    learner = Learner(data, train_idx, spec.model, params, seed=seed, direction=spec.direction, epochs=1)
    batch = min(learner.batch_size, len(learner.train_idx))
    gamma = (max_lr / min_lr) ** (1.0 / max(1, steps - 1))
    rates: list[float] = []
    losses: list[float] = []
    beta = smoothing(steps)
    avg, best, diverged_at = 0.0, math.inf, None
    order, pos = learner.shuffled(), 0
    learner.model.train()
    for i in range(steps):
        rate = min_lr * gamma**i
        for group in learner.opt.param_groups:
            group["lr"] = rate
        if pos + batch > len(order):  # whole batches only: a fresh order once the rest is short
            order, pos = learner.shuffled(), 0
        loss = float(learner.batch_step(order[pos:pos + batch]))
        pos += batch
        if not math.isfinite(loss):
            diverged_at = rate
            break
        avg = beta * avg + (1 - beta) * loss
        value = avg / (1 - beta ** (i + 1))
        rates.append(rate)
        losses.append(loss)
        best = min(best, value)
        if value > DIVERGE_FACTOR * best:
            diverged_at = rate
            break
    smoothed = zero_phase(losses, beta)
    steepest, minimum = suggest(rates, smoothed)
    return RangeTest(rates=rates, losses=losses, smoothed=smoothed, steepest=steepest, low=steepest / 10,
                     minimum=minimum, diverged_at=diverged_at, seed=seed,
                     params={k: v for k, v in params.items() if k != "lr"})


def smoothing(steps: int) -> float:
    """The factor of the loss's exponential moving average (bias-corrected, as fastai's and
    Lightning's range tests smooth it) for a sweep of ``steps``: its window, ``2 / (1 - beta) - 1``
    steps, is a tenth of the sweep (at least 2). Their fixed 0.98 spans ~100 steps, a whole default
    sweep: the average then lags the loss by a decade of rates and misses a divergence at the end."""
    window = max(2.0, SMOOTHING_WINDOW * steps)
    return 1 - 2 / (window + 1)


def _ema(values: list[float], beta: float) -> list[float]:
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def zero_phase(values: list[float], beta: float) -> list[float]:
    """``values`` smoothed by the bias-corrected moving average ``beta`` run forwards and then
    backwards: no lag, so the steepest fall is found at the rate that caused it."""
    return _ema(_ema(values, beta)[::-1], beta)[::-1]


def suggest(rates: list[float], smoothed: list[float]) -> tuple[float, float]:
    """``(steepest, minimum)``: the rate of the steepest fall of ``smoothed`` against ``log10(rate)``
    before its minimum, and the rate at that minimum. HpoError when the loss never fell."""
    s = np.asarray(smoothed)
    end = int(np.argmin(s)) if len(s) else 0
    if end < 2 or s[end] >= s[0]:
        span = f"between {rates[0]:.3g} and {rates[-1]:.3g}" if rates else "at the first rate (it was not finite)"
        raise HpoError(f"the loss did not fall {span}: start lower (--min), sweep more steps (--steps), "
                       "or check the data and model")
    slope = np.gradient(s[:end + 1], np.log10(np.asarray(rates[:end + 1])))
    return float(rates[int(np.argmin(slope))]), float(rates[end])


def plot(test: RangeTest, path: Path, title: str) -> Path:
    """Draw the loss against the rate (log axis), the suggested range shaded; saved as PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    ax.plot(test.rates, test.losses, color="0.75", lw=0.8, label="batch loss")
    ax.plot(test.rates, test.smoothed, color="C0", lw=1.8, label="smoothed loss")
    ax.axvspan(test.low, test.steepest, color="C2", alpha=0.15, label=f"suggested lr {test.low:.2g} to {test.steepest:.2g}")
    ax.axvline(test.steepest, color="C2", lw=1)
    if test.diverged_at is not None:
        ax.axvline(test.diverged_at, color="C3", ls="--", lw=1, label=f"diverged at {test.diverged_at:.2g}")
    ax.set_xscale("log")
    top = max(test.smoothed[0], min(test.smoothed)) * 1.5
    ax.set_ylim(min(min(test.losses), min(test.smoothed)) * 0.9, top)
    ax.set(xlabel="learning rate", ylabel="training loss", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def log_run(test: RangeTest, spec: Spec, png: Path, *, tracking_uri: str, min_lr: float, max_lr: float,
            steps: int) -> str:
    """Record the sweep as a run of its own in the study's experiment (``hpo.role = lr_find``, with the
    study's lineage tags): the curve as metrics by step, the suggestion, the sweep's settings and
    parameters as params, and the PNG as ``lr_find.png``. Returns the run id."""
    import shutil
    import tempfile

    from mlflow.entities import Metric, Param

    from hpo.outbox import MAX_BATCH_METRICS
    from hpo.tracking import Tracker
    from hpo.tracking.lineage import lineage_tags
    from hpo.tracking.names import LR_FIND_PLOT, LR_FIND_ROLE, ROLE_TAG, STUDY_TAG, lr_find_metrics
    from hpo.tracking.tracker import flat_params

    tracker = Tracker(tracking_uri, spec.experiment, spec.name)  # creates the experiment as a study would
    client = tracker.client
    tags = {**lineage_tags(spec), ROLE_TAG: LR_FIND_ROLE, STUDY_TAG: spec.name}
    run = client.create_run(tracker.experiment_id, run_name=f"{spec.name}-lr-find", tags=tags)
    rid = run.info.run_id
    settings = {"lr_find.min_lr": min_lr, "lr_find.max_lr": max_lr, "lr_find.steps": steps, "lr_find.seed": test.seed}
    params = [Param(k, v) for k, v in flat_params({**settings, **test.params}).items()]
    now = int(run.info.start_time)
    metrics = [Metric(k, v, now, step) for k, v, step in lr_find_metrics(test)]
    for start in range(0, len(params), 100):  # MLflow takes 100 params a batch
        client.log_batch(rid, params=params[start:start + 100])
    for start in range(0, len(metrics), MAX_BATCH_METRICS):
        client.log_batch(rid, metrics=metrics[start:start + MAX_BATCH_METRICS])
    with tempfile.TemporaryDirectory() as tmp:  # the artifact's name is fixed, wherever the PNG was written
        copy = Path(tmp) / LR_FIND_PLOT
        shutil.copyfile(png, copy)
        client.log_artifact(rid, str(copy))
    client.set_terminated(rid, "FINISHED")
    return rid


def _rounded(x: float) -> float:
    return float(f"{x:.2g}")


def spec_with_range(spec: Spec, test: RangeTest, out: Path) -> Any:
    """Write to ``out`` a copy of ``spec`` whose ``params.lr`` searches the suggested range (a log
    range; for a grid, three log-spaced values), rounded to two digits, once the copy is checked to
    load (else SpecError, nothing written). Returns the ``params.lr`` written. Comments are not kept."""
    import yaml

    from hpo.spec import parse_spec

    low, high = _rounded(test.low), _rounded(test.steepest)
    raw = dict(spec.raw)
    params = dict(raw.get("params") or {})
    if spec.search.sampler == "grid":
        params["lr"] = [low, _rounded(math.sqrt(low * high)), high]
    else:
        params["lr"] = {"low": low, "high": high, "log": True}
    raw["params"] = params
    diverged = "" if test.diverged_at is None else f", loss diverged at {test.diverged_at:.3g}"
    text = (f"# {out.name}: {spec.path} with params.lr from hpo lr-find (steepest descent at {test.steepest:.3g}"
            f"{diverged})\n" + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    parse_spec(text, str(out))
    out.write_text(text, encoding="utf-8")
    return params["lr"]
