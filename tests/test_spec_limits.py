"""Load-time rules that keep a spec from crashing, hanging or losing records (issue 12).

Store URIs (tracking.uri, tracking.storage, --tracking-uri), CLI overrides through
``Spec.replace``, MLflow's name limits, spec files that are not regular files, huge grids,
and the small space rules (step vs range, equal choices, conditions on bools, keys that
have no effect). The broken-spec corpus in ``tests/specs/bad`` holds one file per rule;
these tests cover what a corpus file cannot: boundaries, the CLI, timing, drivers.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from hpo import space
from hpo.errors import SpecError
from hpo.spec import MAX_EXPERIMENT_NAME, MAX_GRID_POINTS, MAX_SEED, Range, load_spec, parse_spec
from hpo.store_uris import store_uri_problem
from tests.conftest import run_cli

BASE = "name: t\ndata: {dataset: digits}\nmodel: mlp\nsearch: {n_trials: 5}\n"


def _problems(text: str) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return dict(info.value.problems)


def _tracking(**keys: str) -> str:
    body = ", ".join(f"{k}: {v!r}" for k, v in keys.items())
    return BASE + f"tracking: {{{body}}}\n"


# =========================================================================== store URIs


@pytest.mark.parametrize(("uri", "rule"), [
    ("sqlite://", "in-memory sqlite database loses every record"),
    ("sqlite:///:memory:", "in-memory sqlite database loses every record"),
    ("sqlite:///", "in-memory sqlite database loses every record"),
    ("sqlite:///m.db?mode=memory&cache=shared", "in-memory sqlite database loses every record"),
    ("", "must not be empty"),
    ("   ", "must not be empty"),
    ("file:///tmp/mlruns", "MLflow's file store, which MLflow 3.17 refuses"),
    ("./mlruns", "MLflow's file store, which MLflow 3.17 refuses"),
    ("mlflow-artifacts://host:5000/a", "is an artifact location, not a tracking store"),
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("s3://bucket/mlruns", "unsupported scheme 's3'"),
    ("HTTP://host:5000", "write the scheme in lower case"),
    ("http://", "needs a host"),
    ("uc", "Unity Catalog"),
    ("sqlite:mlflow.db", "a sqlite URL is sqlite:///relative/path"),
    ("postgresql+asyncpg://u@h/db", "unknown driver 'asyncpg' for postgresql"),
    ("mysql+mariadbconnector://u@h/db", "needs the DB-API driver mariadb, which is not installed; pip install mariadb"),
])
def test_tracking_uri_rules(uri: str, rule: str):
    problems = _problems(_tracking(uri=uri))
    assert rule in problems["tracking.uri"], problems


@pytest.mark.parametrize("uri", [
    "sqlite:///mlruns/mlflow.db", "sqlite:///not/yet/made/mlflow.db", "sqlite:////tmp/hpo-x/mlflow.db",
    "http://127.0.0.1:5000", "https://mlflow.example.org/", "databricks", "databricks://profile",
])
def test_tracking_uri_accepted(uri: str):
    assert parse_spec(_tracking(uri=uri)).tracking.uri == uri


def test_sqlite_path_under_a_regular_file_or_at_a_folder(tmp_path: Path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    rule = _problems(_tracking(uri=f"sqlite:///{plain}/deeper/mlflow.db"))["tracking.uri"]
    assert f"{plain} is a file, so the folder of the database" in rule
    rule = _problems(_tracking(storage=f"sqlite:///{plain}/optuna.db"))["tracking.storage"]
    assert f"{plain} is a file" in rule
    rule = _problems(_tracking(uri=f"sqlite:///{tmp_path}"))["tracking.uri"]
    assert f"{tmp_path} is a folder; name the database file inside it" in rule
    assert list(tmp_path.iterdir()) == [plain]  # checking made nothing


def test_postgresql_without_its_driver_is_refused(monkeypatch):
    # None in sys.modules is how Python marks a module as not importable (find_spec answers None)
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    rule = _problems(_tracking(uri="postgresql://hpo:secret@db.example.org/mlflow"))["tracking.uri"]
    assert "postgresql needs the DB-API driver psycopg2, which is not installed; pip install psycopg2-binary" in rule
    assert "secret" not in rule and "hpo:***@db.example.org" in rule
    assert "postgresql+psycopg://" in rule  # names the other drivers


def test_postgresql_with_its_driver_is_accepted():
    pytest.importorskip("psycopg2")
    uri = "postgresql://hpo@db.example.org/mlflow"
    spec = parse_spec(_tracking(uri=uri, storage="postgresql+psycopg2://hpo@db.example.org/optuna"))
    assert spec.tracking.uri == uri


def test_driver_lookup_does_not_import_it(monkeypatch):
    pytest.importorskip("psycopg2")
    monkeypatch.delitem(sys.modules, "psycopg2", raising=False)
    assert store_uri_problem("postgresql://h/db") is None
    assert "psycopg2" not in sys.modules


@pytest.mark.parametrize(("storage", "rule"), [
    ("sqlite://", "in-memory sqlite database"),
    ("http://host:5000", "unsupported scheme 'http'"),
    ("databricks", "must be a SQLAlchemy URL"),
    ("mlruns/optuna.db", "must be a SQLAlchemy URL such as sqlite:///mlruns/optuna.db"),
    ("", "must not be empty"),
])
def test_storage_rules(storage: str, rule: str):
    assert rule in _problems(_tracking(storage=storage))["tracking.storage"]


def test_override_tracking_uri_is_checked():
    spec = parse_spec(BASE)
    for uri, rule in (("sqlite://", "in-memory"), ("", "must not be empty"), ("file:///x", "file store")):
        with pytest.raises(SpecError) as info:
            spec.replace(tracking_uri=uri)
        (key, message), = info.value.problems
        assert key == "tracking.uri" and rule in message and message.endswith("(from --tracking-uri)")
    assert spec.replace(tracking_uri="sqlite:///elsewhere/mlflow.db").tracking.uri == "sqlite:///elsewhere/mlflow.db"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["spec", "flag", "storage"])
def test_cli_run_refuses_in_memory_store_and_writes_nothing(how: str, tmp_path: Path):
    spec = tmp_path / "s.yaml"
    tracking = {"spec": "tracking: {uri: 'sqlite://'}\n", "storage": "tracking: {storage: 'sqlite://'}\n"}
    spec.write_text(BASE + tracking.get(how, ""))
    flags = ["--tracking-uri", "sqlite://"] if how == "flag" else []
    proc = run_cli("run", str(spec), *flags, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    key = "tracking.storage" if how == "storage" else "tracking.uri"
    assert f"{spec}: {key}: an in-memory sqlite database loses every record" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(tmp_path.rglob("*")) == [spec]  # no mlruns/, no optuna.db


# =========================================================================== overrides, seeds, names


@pytest.mark.parametrize(("seed", "ok"), [(0, True), (MAX_SEED, True), (MAX_SEED + 1, False), (-1, False)])
def test_seed_is_32_bit_in_the_spec_and_as_override(seed: int, ok: bool):
    text = BASE.replace("n_trials: 5", f"n_trials: 5, seed: {seed}")
    if ok:
        assert parse_spec(text).search.seed == seed
        assert parse_spec(BASE).replace(seed=seed).search.seed == seed
        return
    assert f"must be an integer from 0 to {MAX_SEED}" in _problems(text)["search.seed"]
    with pytest.raises(SpecError) as info:
        parse_spec(BASE).replace(seed=seed)
    (key, message), = info.value.problems
    assert key == "search.seed" and f"(got {seed})" in message and message.endswith("(from --seed)")


def test_override_errors_name_the_spec_file_and_every_bad_key(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    with pytest.raises(SpecError) as info:
        load_spec(path).replace(seed=-1, executor="slurm", tracking_uri="sqlite://")
    assert info.value.file == str(path)
    assert [k for k, _ in info.value.problems] == ["search.seed", "tracking.uri", "execution.executor"]
    assert "(from --executor)" in str(info.value)


@pytest.mark.slow
def test_cli_run_negative_seed_is_a_seed_rule(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE + f"tracking: {{uri: 'sqlite:///{tmp_path}/mlruns/mlflow.db'}}\n")
    proc = run_cli("run", str(spec), "--seed", "-1", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{spec}: search.seed: must be an integer from 0 to {MAX_SEED}" in proc.stderr
    assert "(from --seed)" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(tmp_path.rglob("*")) == [spec]


def test_experiment_name_limit():
    at_limit = "e" * MAX_EXPERIMENT_NAME
    assert parse_spec(_tracking(experiment=at_limit)).experiment == at_limit
    rule = _problems(_tracking(experiment=at_limit + "e"))["tracking.experiment"]
    assert f"is {MAX_EXPERIMENT_NAME + 1} characters; MLflow stores at most {MAX_EXPERIMENT_NAME}" in rule
    assert MAX_EXPERIMENT_NAME <= 500  # never above MLflow's own API limit (mlflow/utils/validation.py)


# =========================================================================== spec files that are not files


def _timed_validate(path: Path, cwd: Path) -> tuple[float, object]:
    start = time.monotonic()
    proc = run_cli("validate", str(path), cwd=cwd, timeout=60)
    return time.monotonic() - start, proc


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")])
def test_device_spec_is_refused(path: str, kind: str):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: cannot read spec: {path} is {kind}, not a regular file; give the path of a YAML file"


def test_fifo_spec_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []
    worker = threading.Thread(target=lambda: result.append(_catch(lambda: load_spec(fifo))), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the test process can exit
        with open(fifo, "w"):
            pass
        pytest.fail("load_spec blocked on a FIFO")
    assert isinstance(result[0], SpecError)
    assert "is a FIFO (named pipe), not a regular file" in str(result[0])


def _catch(fn) -> BaseException | None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return exc
    return None


@pytest.mark.slow
def test_cli_validate_dev_zero_and_fifo_exit_2_quickly(tmp_path: Path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a FIFO (named pipe)")):
        elapsed, proc = _timed_validate(path, tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert f"{path}: cannot read spec: {path} is {kind}, not a regular file" in proc.stderr
        assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
        assert elapsed < 30


def test_crlf_spec_reads_as_text_mode_did(tmp_path: Path):
    path = tmp_path / "s.yaml"
    path.write_bytes(BASE.replace("\n", "\r\n").encode())
    spec = load_spec(path)
    assert spec.source == BASE and spec.spec_hash == parse_spec(BASE).spec_hash


# =========================================================================== grids


def test_huge_grid_size_is_computed_not_built():
    head = BASE.replace("n_trials: 5", "sampler: tpe, n_trials: 5")
    start = time.monotonic()
    spec = parse_spec(head + "params:\n  batch_size: {low: 1, high: 1000000000000000000000000}\n"
                      "  dropout: {low: 0.0, high: 0.5, step: 1e-12}\n")
    assert spec.grid_size == (10**24) * (5 * 10**11 + 1)
    assert {r[0]: r[1] for r in space.describe(spec)}["dropout"] == "float range step 1e-12"
    assert time.monotonic() - start < 2


def test_grid_sampler_limit_is_inclusive():
    head = BASE.replace("n_trials: 5", "sampler: grid")
    spec = parse_spec(head + f"params:\n  batch_size: {{low: 1, high: {MAX_GRID_POINTS}}}\n")
    assert spec.grid_size == spec.n_trials == MAX_GRID_POINTS
    assert len(space.grid(spec)["batch_size"]) == MAX_GRID_POINTS
    rule = _problems(head + f"params:\n  batch_size: {{low: 1, high: {MAX_GRID_POINTS + 1}}}\n")["params"]
    assert f"the grid has {MAX_GRID_POINTS + 1:,} points, more than the {MAX_GRID_POINTS:,}" in rule
    # the product counts, not each parameter alone
    rule = _problems(head + "params:\n  batch_size: {low: 1, high: 1000}\n  depth: {low: 0, high: 100}\n")["params"]
    assert "the grid has 101,000 points" in rule and "params.batch_size alone has 1,000" in rule


def test_range_grid_refuses_to_build_a_huge_list():
    with pytest.raises(ValueError, match="MAX_GRID_POINTS"):
        Range("batch_size", 1, 10**24, True).grid()
    assert Range("dropout", 0.0, 0.5, False, step=1e-12).size == 5 * 10**11 + 1


@pytest.mark.slow
def test_cli_validate_huge_range_with_tpe_is_instant(tmp_path: Path):
    spec = tmp_path / "s.yaml"
    spec.write_text(BASE.replace("n_trials: 5", "sampler: tpe, n_trials: 5")
                    + "params:\n  weight_decay: {low: 0, high: 1, step: 1e-12}\n")
    elapsed, proc = _timed_validate(spec, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "weight_decay" in proc.stdout and elapsed < 30


# =========================================================================== space rules


def test_step_equal_to_the_range_is_two_points_and_larger_is_refused():
    (p,) = parse_spec(BASE + "params:\n  dropout: {low: 0.25, high: 0.5, step: 0.25}\n").space
    assert p.grid() == [0.25, 0.5]
    rule = _problems(BASE + "params:\n  batch_size: {low: 16, high: 32, step: 32}\n")["params.batch_size.step"]
    assert "is larger than the range (32 > high - low = 16)" in rule


@pytest.mark.parametrize(("choices", "pair"), [
    ("[1, 1.0]", "1 and 1.0"), ("[0.0, 0, 0.5]", "0.0 and 0"), ("[1.0, 2.0, 1]", "1.0 and 1"),
])
def test_equal_choices_are_not_distinct(choices: str, pair: str):
    rule = _problems(BASE + f"params:\n  grad_clip: {choices}\n")["params.grad_clip"]
    assert f"choices must be distinct: {pair} are equal" in rule


def test_when_matches_bools_only_with_bools():
    ok = parse_spec(BASE + "params:\n  nesterov: [true, false]\n"
                    "  momentum: {low: 0.8, high: 0.99, when: {nesterov: true}}\n")
    assert ok.space[1].when == (("nesterov", (True,)),)
    for value in ("1", "0", "[1]"):
        problems = _problems(BASE + "params:\n  nesterov: [true, false]\n"
                             f"  momentum: {{low: 0.8, high: 0.99, when: {{nesterov: {value}}}}}\n")
        assert "matches only true or false" in problems["params.momentum.when.nesterov"]
    # and the other way round: true is not the integer 1
    problems = _problems(BASE + "params:\n  depth: [1, 2]\n  width: {choices: [8, 16], when: {depth: true}}\n")
    assert "True is not one of depth's values [1, 2]" in problems["params.width.when.depth"]


@pytest.mark.parametrize(("data", "param", "ok"), [
    ("{dataset: diabetes}", "label_smoothing: 0.1", False),
    ("{dataset: iris}", "label_smoothing: 0.1", True),
    ("{dataset: iris}", "augment: true", False),
    ("{dataset: csv, path: d.csv, target: y, task: classification}", "augment: [true, false]", False),
    ("{dataset: digits}", "augment: true", True),
    ("{dataset: mnist_5k}", "augment: true", True),
])
def test_params_without_effect_are_refused(data: str, param: str, ok: bool):
    text = f"name: t\ndata: {data}\nmodel: mlp\nsearch: {{n_trials: 5}}\nparams:\n  {param}\n"
    if ok:
        parse_spec(text)
        return
    key = param.split(":")[0]
    assert "has no effect" in _problems(text)[f"params.{key}"]
