"""The cyclic and warm-restart schedules: a short run's learning rate, batch by batch, is the torch
scheduler's own trace; and a packed trial's equals the sequential one's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris

from hpo.params import PARAMS, default_value
from hpo.training import Data, Learner


def _learner(**overrides):
    x, y = load_iris(return_X_y=True)
    data = Data.from_arrays(x.astype(np.float32), y, 3, "cpu")
    params = {name: default_value(name, "mlp") for name in PARAMS}
    params.update(depth=1, width=8, batch_size=16, lr=0.1, epochs=6, **overrides)
    return Learner(data, torch.arange(150), "mlp", params, seed=0, direction="maximize", epochs=6), params


def _trace(learner, epochs):
    """The learning rate of every optimizer step over ``epochs`` epochs, as the learner steps its schedule."""
    seen, step = [], learner.opt.step

    def recording(*args, **kwargs):
        seen.append(learner.opt.param_groups[0]["lr"])
        return step(*args, **kwargs)

    learner.opt.step = recording
    for _ in range(epochs):
        learner.step_schedule(learner.train_epoch())
    return seen


def _reference(make, steps):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize(("overrides", "make"), [
    ({"scheduler": "cyclic", "cyclic_ratio": 5.0, "cycle_epochs": 2},
     lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.02, max_lr=0.1, step_size_up=10,
                                                   cycle_momentum=False)),
    ({"scheduler": "sgdr", "restart_epochs": 2, "restart_mult": 2},
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=20, T_mult=2)),
], ids=["cyclic", "sgdr"])
def test_the_schedule_steps_per_batch_as_torchs_own(overrides, make):
    learner, _ = _learner(**overrides)
    assert learner.steps_per_epoch == 10  # 150 rows in batches of 16
    got = _trace(learner, 6)
    want = _reference(make, 60)
    assert got == pytest.approx(want, rel=1e-12)
    if overrides["scheduler"] == "cyclic":  # two cycles of 20 steps between lr/5 and lr, and a third begun
        assert min(got) == pytest.approx(0.02) and max(got) == pytest.approx(0.1)
        assert got[0] == pytest.approx(0.02) and got[10] == pytest.approx(0.1) and got[20] == pytest.approx(0.02)
    else:  # warm restarts after 2 epochs, then after 4 more
        assert got[0] == got[20] == 0.1 and got[19] < 0.01 and got[59] < 0.01


@pytest.mark.parametrize("scheduler", ["cyclic", "sgdr"])
def test_a_packed_trial_steps_the_schedule_like_the_sequential_loop(scheduler):
    from tests.test_packing import both, digits

    unpacked, packed = both(digits(n=300), epochs=3, scheduler=scheduler, cycle_epochs=1, restart_epochs=1)
    assert packed.packed == "true"
    assert np.max(np.abs(np.subtract(packed.fold_values, unpacked.fold_values))) <= 0.03 + 1e-9
