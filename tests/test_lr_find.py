"""``hpo lr-find``: the learning-rate range test on real digits with a real MLP, a real sqlite MLflow
store read back with ``MlflowClient``, and the command run as a user runs it."""

from __future__ import annotations

import pytest

from hpo import lr_find
from hpo.errors import HpoError
from hpo.spec import Choice, Range, load_spec
from tests.conftest import run_cli

SPEC = """
name: lrf
data: {dataset: digits, test_size: 0.2}
model: mlp
search: {sampler: tpe, n_trials: 4, seed: 0}
cv: {folds: 3}
tracking: {uri: STORE, report: false}
params:
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
  batch_size: 64
  width: [32, 64]
  weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}
  depth: {low: 1, high: 3}
  dropout: {low: 0.0, high: 0.2}
  optimizer: [adam, sgd]
  epochs: 3
"""


def _spec(write_spec, store):
    return write_spec(SPEC.replace("STORE", store))


def test_the_command_suggests_a_range_below_divergence_draws_it_records_a_run_and_writes_a_spec(
        tmp_path, write_spec, store):
    from mlflow import MlflowClient

    path = _spec(write_spec, store)
    proc = run_cli("lr-find", str(path), "--steps", "60", "--min", "1e-6", "--max", "10", "--write", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "suggested lr:" in proc.stdout and "diverged at" in proc.stdout
    png = tmp_path / "lrf-lr-find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("lrf")
    runs = client.search_runs([exp.experiment_id], "tags.`hpo.role` = 'lr_find'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["hpo.study"] == "lrf"
    assert run.data.params["lr_find.steps"] == "60" and run.data.params["scheduler"] == "constant"
    steepest, low = run.data.metrics["lr_find/suggested_lr"], run.data.metrics["lr_find/low_lr"]
    diverged = run.data.metrics["lr_find/diverged_lr"]
    assert low == pytest.approx(steepest / 10) and steepest < diverged <= 10
    rates = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr_find/lr"), key=lambda m: m.step)]
    losses = client.get_metric_history(run.info.run_id, "lr_find/loss")
    assert len(losses) == len(rates) and 5 <= len(rates) < 60  # stopped early, on divergence
    assert rates[0] == pytest.approx(1e-6) and all(b > a for a, b in zip(rates, rates[1:], strict=False))
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["lr_find.png"]

    written = load_spec(tmp_path / "spec.lr.yaml")  # beside the spec, and it loads
    lr = next(p for p in written.space if p.name == "lr")
    assert isinstance(lr, Range) and lr.log
    assert lr.low == pytest.approx(float(f"{low:.2g}")) and lr.high == pytest.approx(float(f"{steepest:.2g}"))
    assert written.model == "mlp" and written.name == "lrf"
    assert "hpo lr-find" in (tmp_path / "spec.lr.yaml").read_text().splitlines()[0]


def test_the_same_seed_gives_the_same_curve_and_another_seed_another(write_spec, store):
    spec = load_spec(_spec(write_spec, store))
    a = lr_find.sweep(spec, min_lr=1e-5, max_lr=1.0, steps=25, seed=7)
    b = lr_find.sweep(spec, min_lr=1e-5, max_lr=1.0, steps=25, seed=7)
    c = lr_find.sweep(spec, min_lr=1e-5, max_lr=1.0, steps=25, seed=8)
    assert a.losses == b.losses and a.smoothed == b.smoothed and a.steepest == b.steepest
    assert a.losses != c.losses
    assert a.rates[0] == pytest.approx(1e-5) and a.low == pytest.approx(a.steepest / 10)
    assert a.minimum >= a.steepest  # the steepest fall is searched before the minimum


def test_the_sweep_trains_at_fixed_values_defaults_and_the_middle_of_ranges(write_spec, store):
    spec = load_spec(_spec(write_spec, store))
    params = lr_find.sweep_params(spec)
    assert params["batch_size"] == 64 and params["epochs"] == 3  # fixed
    assert params["optimizer"] == "adam" and params["width"] == 32  # the default where a choice holds it, else the first
    assert params["depth"] == 2 and params["dropout"] == 0.0  # the default inside a range
    assert params["weight_decay"] == pytest.approx(1e-4)  # else the range's (geometric) middle
    assert params["scheduler"] == "constant" and params["loss"] == "cross_entropy"
    assert {p.name for p in spec.space if isinstance(p, Choice | Range)} <= set(params)


def test_a_grid_spec_gets_three_log_spaced_rates(tmp_path, write_spec, store):
    spec = load_spec(write_spec(f"""
        name: lrf-grid
        data: {{dataset: digits}}
        model: mlp
        search: {{sampler: grid}}
        tracking: {{uri: "{store}"}}
        params: {{lr: [0.01, 0.1], width: [32, 64], epochs: 2}}
        """))
    test = lr_find.RangeTest(rates=[1e-4, 1e-3, 1e-2], losses=[2.3, 2.0, 1.0], smoothed=[2.3, 2.1, 1.5],
                             steepest=3e-3, low=3e-4, minimum=1e-2, diverged_at=None, seed=0)
    out = tmp_path / "grid.lr.yaml"
    assert lr_find.spec_with_range(spec, test, out) == [0.0003, 0.00095, 0.003]
    lr = next(p for p in load_spec(out).space if p.name == "lr")
    assert isinstance(lr, Choice) and list(lr.choices) == [0.0003, 0.00095, 0.003]


def test_a_loss_that_never_falls_is_an_error_saying_what_to_change():
    with pytest.raises(HpoError, match="did not fall"):
        lr_find.suggest([1e-3, 1e-2, 1e-1, 1.0], [2.0, 2.1, 2.2, 2.3])
    steepest, minimum = lr_find.suggest([1e-4, 1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.9, 1.0, 0.8, 3.0])
    assert (steepest, minimum) == (1e-2, 1e-1)  # central differences: -0.1, -0.5, -0.55, -0.2 per decade


@pytest.mark.parametrize("flags, key, rule", [
    (("--min", "0"), "--min", "must be > 0"),
    (("--min", "1e-3", "--max", "1e-4"), "--max", "must be greater than --min"),
    (("--steps", "3"), "--steps", "must be >= 5"),
])
def test_bad_flags_exit_2_naming_the_flag_and_write_nothing(tmp_path, write_spec, store, flags, key, rule):
    path = _spec(write_spec, store)
    proc = run_cli("lr-find", str(path), *flags, "--write", cwd=tmp_path)
    assert proc.returncode == 2 and key in proc.stderr and rule in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "lrf-lr-find.png").exists() and not (tmp_path / "spec.lr.yaml").exists()
    assert not (tmp_path / "mlruns").exists()


def test_a_user_objective_is_refused_with_exit_2(tmp_path, write_spec, store):
    (tmp_path / "lrf_objective.py").write_text("def fit_fold(params, fold, ctx):\n    return {'val_acc': 0.5}\n")
    path = write_spec(f"""
        name: lrf-objective
        data: {{dataset: iris}}
        objective: {{function: lrf_objective:fit_fold, metric: val_acc, direction: maximize}}
        search: {{n_trials: 2}}
        tracking: {{uri: "{store}"}}
        params:
          lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
        """)
    proc = run_cli("lr-find", str(path), cwd=tmp_path)
    assert proc.returncode == 2 and "objective" in proc.stderr and "run a short study over lr" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "lrf-objective-lr-find.png").exists()
