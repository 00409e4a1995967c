"""Tests of hpo.spec (the YAML contract), hpo.space (spec -> Optuna) and ``hpo validate``.

Broken specs live in ``tests/specs/bad/*.yaml``; the first line of each says what must be
reported: ``# expect: <key path> | <substring of the rule>`` (an empty key path for problems
of the document as a whole, such as malformed YAML).
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pydantic
import pytest

from hpo import space
from hpo.errors import SpecError
from hpo.params import PARAMS, RESNET_DEPTHS
from hpo.spec import (
    DEFAULT_TRACKING_URI,
    MAX_SPEC_BYTES,
    Choice,
    Fixed,
    Range,
    Spec,
    load_spec,
    parse_spec,
)

ROOT = Path(__file__).resolve().parents[1]
BAD_DIR = ROOT / "tests" / "specs" / "bad"
BAD_SPECS = sorted(BAD_DIR.glob("*.yaml"))
SEARCH_SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))

# A spread of rules for the (slower) end-to-end CLI checks: one subprocess each.
CLI_SUBSET = (
    "unknown_top_key", "type_range_low_string", "range_log_low_zero", "cv_folds_one", "when_unknown_value",
    "cnn_on_tabular", "missing_dataset", "yaml_alias", "yaml_malformed", "doc_list", "enqueue_out_of_range",
    "objectives_first_cost", "constraint_python", "cmaes_categorical", "loss_hinge_on_regression",
)


def _expectation(path: Path) -> tuple[str, str]:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect:"), f"{path.name}: first line must be '# expect: KEY.PATH | RULE'"
    key_path, sep, rule = first[len("# expect:"):].partition(" | ")
    assert sep and rule.strip(), f"{path.name}: expectation needs 'KEY.PATH | RULE'"
    return key_path.strip(), rule.strip()


def _line_for(message: str, file: str, key_path: str) -> list[str]:
    """Lines of ``message`` that report a problem of ``file`` at ``key_path``."""
    prefix = f"{file}: {key_path}: " if key_path else f"{file}: "
    return [line for line in message.splitlines() if line.startswith(prefix)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HPO_DEBUG", None)  # it turns errors into tracebacks on purpose
    return env


def _hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpo", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=_env())


def _files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*"))


BASE = "name: t\ndata: {dataset: digits}\nmodel: mlp\nsearch: {n_trials: 5}\n"


def _spec(text: str = BASE, **kw) -> Spec:
    return parse_spec(text, **kw)


def _with_params(params: str, head: str = BASE) -> Spec:
    return parse_spec(head + "params:\n" + params)


# =========================================================================== broken specs


def test_bad_corpus_is_large_and_annotated():
    assert len(BAD_SPECS) >= 120  # grows with every load-time rule
    for path in BAD_SPECS:
        _expectation(path)


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_is_refused_with_file_key_and_rule(path: Path):
    key_path, rule = _expectation(path)
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    message = str(info.value)
    assert info.value.file == str(path)
    lines = _line_for(message, str(path), key_path)
    assert lines, f"no problem reported at {key_path!r}:\n{message}"
    assert any(rule in line for line in lines), f"{rule!r} not in:\n{message}"
    assert "Traceback" not in message


@pytest.mark.parametrize("name", CLI_SUBSET)
def test_cli_validate_bad_spec_exits_2_and_writes_nothing(name: str, tmp_path: Path):
    path = BAD_DIR / f"{name}.yaml"
    key_path, rule = _expectation(path)
    proc = _hpo("validate", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr
    if key_path:
        assert f"{path}: {key_path}: " in proc.stderr
    assert rule in proc.stderr
    assert proc.stdout == ""
    assert _files_under(tmp_path) == []  # no mlruns/, no database, nothing


def test_cli_run_bad_spec_exits_2_and_creates_nothing(tmp_path: Path):
    path = BAD_DIR / "range_low_gt_high.yaml"
    proc = _hpo("run", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{path}: params.lr: low <= high must hold" in proc.stderr
    assert _files_under(tmp_path) == []


def test_huge_spec_is_refused_before_parsing(tmp_path: Path):
    path = tmp_path / "huge.yaml"
    path.write_text(BASE + "# " + "x" * MAX_SPEC_BYTES + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: spec is ")
    assert f"must be under {MAX_SPEC_BYTES} bytes" in str(info.value)


def test_spec_of_exactly_the_limit_is_read(tmp_path: Path):
    path = tmp_path / "big.yaml"
    path.write_text(BASE + "#" + "x" * (MAX_SPEC_BYTES - len(BASE) - 2) + "\n")
    assert path.stat().st_size == MAX_SPEC_BYTES
    assert load_spec(path).name == "t"


def test_missing_and_undecodable_files(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="cannot read spec") as info:
        load_spec(missing)
    assert str(info.value).startswith(f"{missing}: ")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00\n")
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(binary)


def test_every_problem_is_reported_at_once():
    text = ("name: t\ndata: {dataset: diabetes}\nmodel: mlp\nsearch: {n_trials: 5, metric: accuracy}\n"
            "params:\n  lr: {low: 0.1, high: 0.01}\n  epochs: 0\n")
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    paths = [p for p, _ in info.value.problems]
    assert paths == ["search.metric", "params.lr", "params.epochs"]


# =========================================================================== good specs


def test_defaults_are_filled():
    spec = _spec()
    assert spec.search.sampler == "tpe"
    assert spec.cv.folds == 5
    assert spec.task == "classification"
    assert spec.metric == "accuracy" and spec.direction == "maximize"
    assert spec.data.test_size == 0.2 and spec.data.download is False and spec.data.path is None
    assert spec.tracking.uri == DEFAULT_TRACKING_URI == "sqlite:///mlruns/mlflow.db"
    assert spec.experiment == "t"
    assert spec.search.seed == 0 and spec.search.pruner == "none" and spec.search.timeout is None
    assert (spec.execution.executor, spec.execution.max_concurrent_trials, spec.execution.device) == ("local", 1, "auto")
    assert spec.tracking.keep_checkpoints == 1
    assert spec.n_trials == 5
    assert spec.space == ()


@pytest.mark.parametrize(("data", "metric", "task", "direction"), [
    ("{dataset: digits}", None, "classification", "maximize"),
    ("{dataset: diabetes}", None, "regression", "minimize"),
    ("{dataset: diabetes}", "r2", "regression", "maximize"),
    ("{dataset: diabetes}", "mae", "regression", "minimize"),
    ("{dataset: iris}", "log_loss", "classification", "minimize"),
    ("{dataset: wine}", "f1_macro", "classification", "maximize"),
    ("{dataset: csv, path: d.csv, target: y, task: regression}", None, "regression", "minimize"),
    ("{dataset: csv, path: d.csv, target: y, task: classification}", None, "classification", "maximize"),
])
def test_metric_and_direction_follow_the_task(data, metric, task, direction):
    search = "{n_trials: 3" + (f", metric: {metric}" if metric else "") + "}"
    spec = _spec(f"name: t\ndata: {data}\nmodel: mlp\nsearch: {search}\n")
    assert spec.task == task
    assert spec.metric == (metric or {"classification": "accuracy", "regression": "rmse"}[task])
    assert spec.direction == direction


def test_explicit_values_are_kept():
    spec = _spec("name: my.study_1\ndata: {dataset: mnist, path: data/mnist, test_size: 0.25, download: true}\n"
                 "model: cnn\nsearch: {sampler: random, n_trials: 7, timeout: 60, seed: 3, pruner: median}\n"
                 "cv: {folds: 3}\nexecution: {device: cpu, max_concurrent_trials: 2}\n"
                 "tracking: {uri: 'sqlite:///x/db.sqlite', experiment: exp, keep_checkpoints: 0}\n")
    assert (spec.name, spec.data.dataset, spec.data.path, spec.data.test_size) == ("my.study_1", "mnist", "data/mnist", 0.25)
    assert spec.data.download is True
    assert (spec.search.sampler, spec.n_trials, spec.search.timeout, spec.search.seed) == ("random", 7, 60, 3)
    assert spec.search.pruner == "median" and spec.cv.folds == 3
    assert spec.execution.device == "cpu" and spec.execution.max_concurrent_trials == 2
    assert spec.tracking.uri == "sqlite:///x/db.sqlite" and spec.experiment == "exp"
    assert spec.tracking.keep_checkpoints == 0


GRID_HEAD = "name: g\ndata: {dataset: digits}\nmodel: mlp\nsearch: {sampler: grid%s}\n"


@pytest.mark.parametrize(("n_trials", "expected"), [("", 12), (", n_trials: 5", 5), (", n_trials: 12", 12),
                                                   (", n_trials: 100", 12)])
def test_grid_n_trials_defaults_to_and_is_capped_by_grid_size(n_trials, expected):
    spec = _with_params("  depth: {low: 1, high: 3}\n  batch_size: [32, 64]\n  optimizer: [sgd, adam]\n  epochs: 3\n",
                        GRID_HEAD % n_trials)
    assert spec.grid_size == 12
    assert spec.n_trials == expected


def test_grid_without_varying_params_is_one_trial():
    spec = _with_params("  epochs: 3\n", GRID_HEAD % "")
    assert spec.grid_size == 1 and spec.n_trials == 1


def test_grid_size_is_none_for_continuous_space():
    assert _with_params("  dropout: {low: 0.0, high: 0.5}\n").grid_size is None


# the parameter's kind decides: grad_clip is a float parameter, so integer bounds still give a float range
@pytest.mark.parametrize(("rng", "is_int", "low", "high"), [
    ("{low: 1, high: 3}", False, 1, 3),
    ("{low: 1, high: 3.0}", False, 1, 3.0),
    ("{low: 0.0, high: 1}", False, 0.0, 1),
    ("{low: 1.0e-4, high: 1.0e-1}", False, 1e-4, 0.1),
    ("{low: 1e-4, high: 1e-1}", False, 1e-4, 0.1),  # YAML 1.2 exponent floats
    ("{low: 0, high: 4, step: 2}", False, 0, 4),
    ("{low: 0, high: 4, step: 0.5}", False, 0, 4),
])
def test_int_vs_float_range_detection(rng, is_int, low, high):
    (p,) = _with_params(f"  grad_clip: {rng}\n").space
    assert isinstance(p, Range)
    assert p.is_int is is_int
    assert (p.low, p.high) == (low, high)
    assert type(p.low) is type(low) and type(p.high) is type(high)


def test_int_param_range_and_log():
    (p,) = _with_params("  batch_size: {low: 16, high: 256, log: true}\n").space
    assert p == Range("batch_size", 16, 256, True, True, None)


@pytest.mark.parametrize(("rng", "points"), [
    ("{low: 0.0, high: 0.3, step: 0.1}", [0.0, 0.1, 0.2, 0.3]),
    ("{low: 0.0, high: 0.25, step: 0.1}", [0.0, 0.1, 0.2]),  # high not on the grid: last point below it
    ("{low: 0.1, high: 0.5, step: 0.1}", [0.1, 0.2, 0.3, 0.4, 0.5]),
    ("{low: 16, high: 64, step: 16}", [16, 32, 48, 64]),
    ("{low: 1, high: 10, step: 3}", [1, 4, 7, 10]),
    ("{low: 1, high: 4}", [1, 2, 3, 4]),
])
def test_step_handling_and_grid_points(rng, points):
    name = "dropout" if "." in rng else "batch_size"
    (p,) = _with_params(f"  {name}: {rng}\n").space
    assert p.grid() == points
    assert all(type(x) is type(points[0]) for x in p.grid())


def test_low_equal_high_is_fixed_and_single_choice_is_fixed():
    spec = _with_params("  lr: {low: 0.01, high: 0.01}\n  batch_size: [32]\n  optimizer: {choices: [sgd]}\n")
    assert spec.space == (Fixed("lr", 0.01), Fixed("batch_size", 32), Fixed("optimizer", "sgd"))


def test_scalars_lists_and_ranges_map_to_param_kinds():
    spec = _with_params("  lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n  batch_size: [32, 64, 128]\n"
                        "  depth: {low: 1, high: 3}\n  optimizer: [sgd, adam, adamw]\n  epochs: 20\n"
                        "  nesterov: [true, false]\n  activation: gelu\n")
    by_name = {p.name: p for p in spec.space}
    assert by_name["lr"] == Range("lr", 1e-4, 1e-1, False, True)
    assert by_name["batch_size"] == Choice("batch_size", (32, 64, 128))
    assert by_name["depth"] == Range("depth", 1, 3, True)
    assert by_name["optimizer"] == Choice("optimizer", ("sgd", "adam", "adamw"))
    assert by_name["epochs"] == Fixed("epochs", 20)
    assert by_name["nesterov"] == Choice("nesterov", (True, False))
    assert spec.fixed_params()["activation"] == "gelu"
    assert [p.name for p in spec.space] == ["lr", "batch_size", "depth", "optimizer", "epochs", "nesterov", "activation"]


def test_when_produces_a_conditional_param():
    spec = _with_params("  optimizer: [sgd, adam, rmsprop]\n"
                        "  momentum: {low: 0.8, high: 0.99, when: {optimizer: sgd}}\n"
                        "  nesterov: {choices: [true, false], when: {optimizer: [sgd]}}\n"
                        "  weight_decay: {choices: [0.0], when: {optimizer: [adam, rmsprop]}}\n")
    by_name = {p.name: p for p in spec.space}
    assert by_name["momentum"] == Range("momentum", 0.8, 0.99, False, when=(("optimizer", ("sgd",)),))
    assert by_name["nesterov"] == Choice("nesterov", (True, False), when=(("optimizer", ("sgd",)),))
    assert by_name["weight_decay"] == Fixed("weight_decay", 0.0, when=(("optimizer", ("adam", "rmsprop")),))
    assert by_name["optimizer"].when == ()


def test_when_on_a_fixed_parent_is_allowed():
    spec = _with_params("  optimizer: sgd\n  momentum: {low: 0.8, high: 0.99, when: {optimizer: sgd}}\n")
    assert spec.space[1].when == (("optimizer", ("sgd",)),)


@pytest.mark.parametrize(("model", "depth", "width", "batch_norm"), [
    ("mlp", 2, 128, False), ("cnn", 2, 32, True), ("resnet", 20, 16, True),
])
def test_model_dependent_defaults(model, depth, width, batch_norm):
    spec = _spec(f"name: t\ndata: {{dataset: digits}}\nmodel: {model}\nsearch: {{n_trials: 2}}\n")
    fixed = spec.fixed_params()
    assert (fixed["depth"], fixed["width"], fixed["batch_norm"]) == (depth, width, batch_norm)
    assert set(fixed) == set(PARAMS)
    assert space.resolve(spec, {})["depth"] == depth


def test_resnet_depths_accepted():
    depths = ", ".join(map(str, RESNET_DEPTHS))
    spec = _spec(f"name: t\ndata: {{dataset: cifar10, path: data/c10}}\nmodel: resnet\nsearch: {{n_trials: 2}}\n"
                 f"params:\n  depth: [{depths}]\n  batch_norm: true\n")
    assert spec.space[0] == Choice("depth", RESNET_DEPTHS)


def test_replace_overrides_without_touching_the_original():
    spec = _spec()
    new = spec.replace(seed=7, tracking_uri="sqlite:////tmp/x.db", executor="ray", device="cpu",
                       max_concurrent_trials=3, n_trials=11)
    assert (new.search.seed, new.tracking.uri, new.n_trials) == (7, "sqlite:////tmp/x.db", 11)
    assert (new.execution.executor, new.execution.device, new.execution.max_concurrent_trials) == ("ray", "cpu", 3)
    assert (spec.search.seed, spec.tracking.uri, spec.n_trials) == (0, DEFAULT_TRACKING_URI, 5)
    assert spec.execution.executor == "local"
    assert new.search.sampler == spec.search.sampler and new.space == spec.space
    assert new.spec_hash == spec.spec_hash
    assert spec.replace() == spec


def test_spec_hash_is_stable_and_tracks_the_text(tmp_path: Path):
    a, b = _spec(), _spec()
    assert a.spec_hash == b.spec_hash
    assert len(a.spec_hash) == 12 and int(a.spec_hash, 16) >= 0
    import hashlib

    assert a.spec_hash == hashlib.sha256(BASE.encode()).hexdigest()[:12]
    assert _spec(BASE + "# a comment\n").spec_hash != a.spec_hash
    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    loaded = load_spec(path)
    assert loaded.spec_hash == a.spec_hash
    assert loaded.source == BASE and loaded.path == str(path)


def test_spec_is_frozen():
    spec = _spec()
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.search.seed = 3  # type: ignore[misc]


# =========================================================================== hpo.space


@pytest.fixture(scope="module")
def optuna():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


SPACE_PARAMS = (
    "  lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n"
    "  batch_size: {low: 16, high: 64, step: 16}\n"
    "  depth: {low: 1, high: 3}\n"
    "  dropout: {low: 0.0, high: 0.5}\n"
    "  optimizer: [sgd, adam, adamw]\n"
    "  momentum: {low: 0.8, high: 0.99, when: {optimizer: sgd}}\n"
    "  nesterov: {choices: [true, false], when: {optimizer: sgd}}\n"
    "  width: {low: 8, high: 64, log: true}\n"
    "  epochs: 20\n"
)


def _sample(optuna, spec: Spec, n: int, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, space.suggest(trial, spec)))
        study.tell(trial, 0.0)
    return out


def test_suggest_samples_conditionals_only_when_active(optuna):
    spec = _with_params(SPACE_PARAMS)
    samples = _sample(optuna, spec, 300)
    optimizers = Counter(s["optimizer"] for _, s in samples)
    assert set(optimizers) == {"sgd", "adam", "adamw"}
    for trial, s in samples:
        assert set(s) == set(trial.params)
        active = s["optimizer"] == "sgd"
        assert ("momentum" in s) is active and ("nesterov" in s) is active
        assert "epochs" not in s  # fixed values are not sampled
        values = space.resolve(spec, s)
        assert values["epochs"] == 20
        if not active:
            assert values["momentum"] == PARAMS["momentum"].default
            assert values["nesterov"] is PARAMS["nesterov"].default


def test_suggest_respects_inclusive_bounds_steps_and_log(optuna):
    spec = _with_params(SPACE_PARAMS)
    samples = [s for _, s in _sample(optuna, spec, 400, seed=1)]
    trial0 = _sample(optuna, spec, 1)[0][0]
    dists = trial0.distributions
    assert dists["lr"].log and dists["width"].log and not dists["dropout"].log
    assert dists["batch_size"].step == 16

    lrs = [s["lr"] for s in samples]
    assert all(1e-4 <= v <= 1e-1 for v in lrs)
    below = sum(v < math.sqrt(1e-4 * 1e-1) for v in lrs) / len(lrs)  # log-uniform: half below the geometric mean
    assert 0.4 < below < 0.6
    assert all(isinstance(s["batch_size"], int) for s in samples)
    assert {s["batch_size"] for s in samples} == {16, 32, 48, 64}  # both ends reached
    assert {s["depth"] for s in samples} == {1, 2, 3}
    assert all(isinstance(s["depth"], int) for s in samples)
    assert all(0.0 <= s["dropout"] <= 0.5 for s in samples)
    assert all(8 <= s["width"] <= 64 and isinstance(s["width"], int) for s in samples)
    assert min(s["width"] for s in samples) == 8  # the low end is reachable
    moms = [s["momentum"] for s in samples if "momentum" in s]
    assert moms and all(0.8 <= v <= 0.99 for v in moms)


def test_suggest_float_step_values_are_on_the_grid(optuna):
    spec = _with_params("  dropout: {low: 0.0, high: 0.3, step: 0.1}\n")
    values = {round(s["dropout"], 9) for _, s in _sample(optuna, spec, 100)}
    assert values == {0.0, 0.1, 0.2, 0.3}


def test_resolve_fills_defaults_fixed_values_and_sampled():
    spec = _with_params(SPACE_PARAMS)
    values = space.resolve(spec, {"lr": 0.01, "batch_size": 32, "depth": 2, "dropout": 0.1, "optimizer": "sgd",
                                  "momentum": 0.95, "nesterov": True, "width": 16})
    assert set(values) == set(PARAMS)
    assert values["lr"] == 0.01 and values["momentum"] == 0.95 and values["nesterov"] is True
    assert values["epochs"] == 20
    assert values["activation"] == "relu" and values["scheduler"] == "constant" and values["batch_norm"] is False
    # an inactive conditional keeps its default even if a value is passed for it
    values = space.resolve(spec, {"optimizer": "adam", "momentum": 0.5})
    assert values["optimizer"] == "adam" and values["momentum"] == PARAMS["momentum"].default
    # parameters not sampled fall back to their defaults
    assert space.resolve(spec, {})["lr"] == PARAMS["lr"].default


def test_resolve_orders_parents_before_children():
    # the child is listed before its parent in the YAML
    spec = _with_params("  momentum: {low: 0.8, high: 0.99, when: {optimizer: sgd}}\n  optimizer: [sgd, adam]\n")
    assert space.resolve(spec, {"optimizer": "sgd", "momentum": 0.85})["momentum"] == 0.85
    assert space.resolve(spec, {"optimizer": "adam", "momentum": 0.85})["momentum"] == 0.9


def test_resolve_fixed_conditional():
    spec = _with_params("  optimizer: [sgd, adam]\n  weight_decay: {choices: [0.01], when: {optimizer: adam}}\n")
    assert space.resolve(spec, {"optimizer": "adam"})["weight_decay"] == 0.01
    assert space.resolve(spec, {"optimizer": "sgd"})["weight_decay"] == 0.0


GRID_PARAMS = ("  depth: {low: 1, high: 3}\n  batch_size: [32, 64]\n  dropout: {low: 0.0, high: 0.2, step: 0.1}\n"
               "  optimizer: [sgd, adam]\n  epochs: 2\n")


def test_grid_is_the_product_of_the_space():
    spec = _with_params(GRID_PARAMS, GRID_HEAD % "")
    g = space.grid(spec)
    assert g == {"depth": [1, 2, 3], "batch_size": [32, 64], "dropout": [0.0, 0.1, 0.2], "optimizer": ["sgd", "adam"]}
    assert spec.grid_size == spec.n_trials == math.prod(len(v) for v in g.values()) == 36


def test_grid_sampler_visits_every_point_once(optuna):
    spec = _with_params(GRID_PARAMS, GRID_HEAD % "")
    g = space.grid(spec)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(g, seed=0))
    seen = []

    def objective(trial):
        s = space.suggest(trial, spec)
        seen.append(tuple(s[k] for k in g))
        assert space.resolve(spec, s)["epochs"] == 2
        return 0.0

    study.optimize(objective, n_trials=spec.n_trials)
    expected = set(itertools.product(*g.values()))
    assert len(seen) == len(expected) == spec.n_trials
    assert Counter(seen) == Counter(expected)


def test_describe_lists_every_param():
    spec = _with_params(SPACE_PARAMS)
    rows = space.describe(spec)
    assert {r[0] for r in rows} == set(PARAMS)
    assert ("momentum", "float range", "[0.8, 0.99]  when optimizer in ['sgd']") in rows
    assert ("lr", "float range log", "[0.0001, 0.1]") in rows


# =========================================================================== shipped specs


def test_search_spaces_exist():
    assert SEARCH_SPACES


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_shipped_spec_loads(path: Path):
    spec = load_spec(path)
    assert spec.n_trials >= 1


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_cli_validate_shipped_spec_exits_0(path: Path, tmp_path: Path):
    proc = _hpo("validate", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "Traceback" not in proc.stderr
    assert _files_under(tmp_path) == []
