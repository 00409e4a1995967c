"""The user's own data: data factories (``data.factory``), ``npz`` and ``parquet`` files, ``data.standardize``.

Every factory module is written into ``tmp_path`` by the test (never importable from the
repository); studies run through the real CLI with ``cwd=tmp_path``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo.data import load_dataset, load_spec_dataset
from hpo.errors import DataError, SpecError
from hpo.spec import load_spec, parse_spec
from hpo.training import Data, Learner
from tests.conftest import run_cli

MODULE = "userdata_t"  # the factory module's name; unique so no other test's module shadows it

FACTORIES = '''
import numpy as np


def _xy(n=60, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return rng.normal(size=(n, 4)) * 0.3 + y[:, None], y


def good(n: int = 150, noise: float = 0.3):
    x, y = _xy(n)
    return x * noise / 0.3, np.array(["cat", "dog", "emu"])[y]


def required(n: int, scale: float = 1.0):
    return _xy(n)


def tensors():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (80, 1, 6, 6), dtype=torch.uint8, generator=g)
    y = torch.arange(80) % 2
    return {"x_train": x[:60], "y_train": y[:60], "x_test": x[60:], "y_test": y[60:]}


def raises():
    raise ValueError("no such bucket: s3://nowhere")


def wrong_structure():
    return [1, 2, 3]


def length_mismatch():
    x, y = _xy()
    return x, y[:-1]


def with_nan():
    x, y = _xy()
    x[5, 2] = np.nan
    return x, y


def three_d():
    x, y = _xy()
    return x.reshape(60, 2, 2), y


def negative_label():
    x, y = _xy()
    y[0] = -1
    return x, y


def label_gap():
    x, y = _xy()
    return x, np.where(y == 2, 5, y)


def float_labels():
    x, y = _xy()
    return x, y + 0.5


def rare_class():
    x, y = _xy()
    y = np.where(y == 2, 0, y)
    y[:2] = 2
    return x, y


def empty_test():
    x, y = _xy()
    return x, y, x[:0], y[:0]
'''


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch) -> Path:
    """``tmp_path`` holding the factory module, the data files and nothing else; the module forgotten after."""
    (tmp_path / f"{MODULE}.py").write_text(FACTORIES)
    rng = np.random.default_rng(1)
    y = np.arange(60) % 3
    np.savez(tmp_path / "no_x.npz", y=y)
    np.savez(tmp_path / "pickled.npz", x=rng.normal(size=(60, 4)), y=np.array([{"label": int(v)} for v in y]))
    import pandas as pd

    frame = pd.DataFrame({"a": rng.normal(size=60), "colour": np.where(y == 1, "red", "blue"), "city": "Oslo",
                          "label": y})
    frame.to_parquet(tmp_path / "text.parquet")
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def _spec_text(data: str, folds: int = 2, name: str = "userdata") -> str:
    return textwrap.dedent(f"""\
        name: {name}
        data: {data}
        model: mlp
        search: {{sampler: random, n_trials: 2, seed: 3}}
        cv: {{folds: {folds}}}
        params: {{epochs: 2, lr: 0.01, batch_size: 32}}
        """)


def _write_spec(folder: Path, data: str, folds: int = 2) -> Path:
    path = folder / "study.yaml"
    path.write_text(_spec_text(data, folds))
    return path


def _factory(attr: str, args: str = "", task: str = "classification", extra: str = "") -> str:
    args_part = f", args: {args}" if args else ""
    return f"{{factory: '{MODULE}:{attr}'{args_part}, task: {task}{extra}}}"


# ---------------------------------------------------------------------------- what a factory gives


def test_factory_dataset_sizes_class_names_and_stratified_split(user_dir: Path) -> None:
    spec = load_spec(_write_spec(user_dir, _factory("good", "{n: 150, noise: 0.3}")))
    assert spec.data.factory == f"{MODULE}:good" and spec.data.args == {"n": 150, "noise": 0.3}
    assert spec.data.dataset is None and spec.task == "classification"
    ds = load_spec_dataset(spec)
    assert ds.name == f"{MODULE}:good" and not ds.is_image
    assert (len(ds.x_train), len(ds.x_test)) == (120, 30) and ds.input_shape == (4,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.class_names == ("cat", "dog", "emu") and ds.n_classes == 3
    # stratified: 50 of each class, so 10 of each in the test split
    assert np.bincount(ds.y_test).tolist() == [10, 10, 10]
    again = load_spec_dataset(spec)  # the study seed fixes the split
    assert np.array_equal(again.x_test, ds.x_test) and np.array_equal(again.y_train, ds.y_train)
    other = load_spec_dataset(spec.replace(seed=4))
    assert not np.array_equal(other.y_train, ds.y_train) or not np.array_equal(other.x_train, ds.x_train)


def test_factory_tensors_dict_with_test_split_and_uint8_images(user_dir: Path) -> None:
    ds = load_spec_dataset(load_spec(_write_spec(user_dir, _factory("tensors"))))
    assert (len(ds.x_train), len(ds.x_test)) == (60, 20)  # the factory's own test split, not re-split
    assert ds.x_train.dtype == np.uint8 and ds.is_image and ds.input_shape == (1, 6, 6)
    assert ds.class_names == ("0", "1") and ds.y_test.tolist() == [i % 2 for i in range(60, 80)]


# ---------------------------------------------------------------------------- data.standardize


def test_standardize_is_a_spec_key_defaulting_to_true() -> None:
    base = "name: t\nmodel: mlp\nsearch: {n_trials: 2}\n"
    assert parse_spec(base + "data: {dataset: iris}\n").data.standardize is True
    assert parse_spec(base + "data: {dataset: iris, standardize: false}\n").data.standardize is False
    with pytest.raises(SpecError, match=r"data.standardize: must be a valid boolean"):
        parse_spec(base + "data: {dataset: iris, standardize: maybe}\n")


def _learner(standardize: bool, x: np.ndarray, y: np.ndarray) -> Learner:
    from hpo.params import default_value, param_names

    params = {name: default_value(name, "mlp") for name in param_names("mlp")}
    data = Data.from_arrays(x, y, 3, "cpu", standardize=standardize)
    return Learner(data, torch.arange(40), "mlp", params, seed=0, direction="maximize", epochs=1)


def test_standardize_false_feeds_the_inputs_unchanged() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(60, 5)) * 7 + 40).astype(np.float32)  # far from mean 0 / std 1
    y = np.arange(60) % 3
    off, on = _learner(False, x, y), _learner(True, x, y)
    assert torch.equal(off.model.x_mean, torch.zeros(5)) and torch.equal(off.model.x_std, torch.ones(5))
    assert off.x_scaled is not None and torch.equal(off.x_scaled, torch.as_tensor(x))
    # with it on (the default, today's behaviour) the stats are those of the training indices
    assert torch.allclose(on.model.x_mean, torch.as_tensor(x[:40].mean(0)), atol=1e-4)
    assert on.model.x_mean.shape == off.model.x_mean.shape  # a saved model has the same buffers either way
    xb = torch.as_tensor(x[:8])
    assert torch.allclose(off.model(xb), off.model.net(xb))


def test_standardize_false_keeps_image_buffers_per_channel() -> None:
    x = np.random.default_rng(0).integers(0, 256, (60, 3, 4, 4)).astype(np.uint8)
    off = _learner(False, x, np.arange(60) % 3)
    assert off.model.x_mean.shape == (3, 1, 1) and float(off.model.x_std.min()) == 1.0
    assert off.data.x.dtype == torch.uint8


# ---------------------------------------------------------------------------- npz and parquet


def _npz_and_parquet(folder: Path) -> dict[str, str]:
    rng = np.random.default_rng(2)
    y = np.arange(90) % 3
    x = (rng.normal(size=(90, 4)) * 0.3 + y[:, None]).astype(np.float64)
    np.savez(folder / "rows.npz", x=x[:70], y=np.array(["a", "b", "c"])[y[:70]], x_test=x[70:],
             y_test=np.array(["a", "b", "c"])[y[70:]])
    import pandas as pd

    frame = pd.DataFrame(x, columns=["f0", "f1", "f2", "f3"])
    frame["kind"] = np.array(["a", "b", "c"])[y]
    frame.to_parquet(folder / "rows.parquet")
    return {"npz": "{dataset: npz, path: rows.npz, task: classification}",
            "parquet": "{dataset: parquet, path: rows.parquet, target: kind, task: classification}"}


def test_npz_and_parquet_load(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    specs = _npz_and_parquet(tmp_path)
    npz = load_spec_dataset(load_spec(_write_spec(tmp_path, specs["npz"])))
    assert (len(npz.x_train), len(npz.x_test)) == (70, 20) and npz.class_names == ("a", "b", "c")
    pq = load_dataset("parquet", path="rows.parquet", target="kind", task="classification", test_size=0.2)
    assert pq.name == "parquet" and pq.feature_names == ("f0", "f1", "f2", "f3") and len(pq.x_test) == 18
    assert np.bincount(pq.y_test).tolist() == [6, 6, 6]


def test_parquet_without_an_engine_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import pandas as pd

    path = tmp_path / "rows.parquet"
    pd.DataFrame({"a": np.arange(20.0), "y": np.arange(20) % 2}).to_parquet(path)
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")] + ["fastparquet"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if neither engine were installed: imports fail
    with pytest.raises(DataError) as info:
        load_dataset("parquet", path=path, target="y", task="classification")
    assert str(info.value) == (f"{path}: reading parquet needs pyarrow or fastparquet and neither is installed: "
                               "pip install pyarrow")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npz", "parquet"])
def test_npz_and_parquet_studies_run(tmp_path: Path, fmt: str) -> None:
    from mlflow.tracking import MlflowClient

    spec = _write_spec(tmp_path, _npz_and_parquet(tmp_path)[fmt])
    proc = run_cli("run", str(spec), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    store = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("userdata").experiment_id])
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)  # a parent and 2 trials


@pytest.mark.slow
def test_factory_study_runs_end_to_end_through_the_cli(user_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    spec = _write_spec(user_dir, _factory("good", "{n: 150, noise: 0.3}", extra=", standardize: false"))
    proc = run_cli("run", "study.yaml", cwd=user_dir, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert spec.exists()
    store = f"sqlite:///{user_dir}/mlruns/mlflow.db"
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("userdata").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert client.get_registered_model("userdata").latest_versions
    assert not (user_dir / "__pycache__").exists()  # importing the factory wrote no bytecode beside it


# ---------------------------------------------------------------------------- broken data


BROKEN = {
    # id: (data: mapping, cv.folds, key path, rule)
    "factory raises": (_factory("raises"), 2, "data.factory",
                       f"data factory {MODULE}:raises raised ValueError: no such bucket: s3://nowhere"),
    "wrong structure": (_factory("wrong_structure"), 2, "data.factory",
                        "must return (x, y), (x_train, y_train, x_test, y_test) or a dict"),
    "length mismatch": (_factory("length_mismatch"), 2, "data.factory",
                        "x and y have different lengths (60 vs 59)"),
    "NaN in x": (_factory("with_nan"), 2, "data.factory", "x has 1 NaN or infinite value(s) (first at index (5, 2)"),
    "3-D x": (_factory("three_d"), 2, "data.factory", "x must be 2-D (N, F) features or 4-D (N, C, H, W) images "
              "(got 3-D, shape (60, 2, 2))"),
    "negative label": (_factory("negative_label"), 2, "data.factory", "y has label -1 out of range"),
    "label gap": (_factory("label_gap"), 2, "data.factory", "labels go up to 5, but y has no example of 2, 3, 4"),
    "float labels": (_factory("float_labels"), 2, "data.factory", "y has non-integer value 0.5"),
    "too few of a class": (_factory("rare_class"), 3, "data.factory",
                           "has class(es) with fewer than 3 examples in the training split: '2' ("),
    "empty test split": (_factory("empty_test"), 2, "data.factory", "the test split x_test is empty"),
    "unknown arg": (_factory("good", "{n: 90, nosie: 0.2}"), 2, "data.args.nosie",
                    "is not a keyword of good (its keywords: n, noise) (did you mean 'noise'?)"),
    "missing required arg": (_factory("required"), 2, "data.args.n", "required's keyword 'n' has no default"),
    "arg of the wrong type": (_factory("good", "{n: many}"), 2, "data.args.n", "'many' does not fit the annotation int"),
    "module does not import": ("{factory: 'no_such_module_xyz:load', task: classification}", 2, "data.factory",
                               "cannot import module 'no_such_module_xyz'"),
    "dataset and factory": (_factory("good", extra=", dataset: iris"), 2, "data.factory",
                            "give data.dataset or data.factory, not both"),
    "factory without task": (f"{{factory: '{MODULE}:good'}}", 2, "data.task", "required with data.factory"),
    "npz without x": ("{dataset: npz, path: no_x.npz, task: classification}", 2, "data.path",
                      "no x: the training inputs x and labels y are required"),
    "npz with pickled objects": ("{dataset: npz, path: pickled.npz, task: classification}", 2, "data.path",
                                 "array 'y' holds Python objects (pickled"),
    "parquet text columns": ("{dataset: parquet, path: text.parquet, target: label, task: classification}", 2,
                             "data.path", "feature columns 'colour', 'city' are not numeric"),
}  # fmt: skip


def _refused(user_dir: Path, case: str) -> str:
    """The message loading ``case`` gives, in this process (spec, then data), as ``hpo run`` would."""
    data, folds, _key, _rule = BROKEN[case]
    spec_file = _write_spec(user_dir, data, folds)
    try:
        load_spec_dataset(load_spec(spec_file))
    except (SpecError, DataError) as exc:
        return str(exc)
    raise AssertionError(f"{case}: no error")


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_user_data_is_refused_naming_file_key_and_rule(user_dir: Path, monkeypatch, case: str) -> None:
    monkeypatch.chdir(user_dir)
    _data, _folds, key, rule = BROKEN[case]
    message = _refused(user_dir, case)
    prefix = f"{user_dir / 'study.yaml'}: {key}: "
    lines = [line for line in message.splitlines() if line.startswith(prefix)]
    assert lines and any(rule in line for line in lines), f"{prefix}...{rule!r} not in:\n{message}"
    assert not (user_dir / "__pycache__").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BROKEN))
def test_cli_run_refuses_broken_user_data_and_writes_nothing(user_dir: Path, case: str) -> None:
    data, folds, key, rule = BROKEN[case]
    spec_file = _write_spec(user_dir, data, folds)
    before = sorted(p.name for p in user_dir.iterdir())
    proc = run_cli("run", str(spec_file), cwd=user_dir, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert f"{spec_file}: {key}: " in proc.stderr and rule in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in user_dir.iterdir()) == before  # no mlruns/, no optuna.db, no __pycache__


@pytest.mark.slow
def test_standardize_false_reaches_the_study_and_its_refit_model(tmp_path: Path) -> None:
    """The flag travels spec -> fold data -> every learner, the refit included: the logged model's
    input statistics are the identity."""
    import hpo

    spec = tmp_path / "raw.yaml"
    spec.write_text("name: raw\ndata: {dataset: iris, standardize: false}\nmodel: mlp\n"
                    "search: {n_trials: 1}\ncv: {folds: 2}\ntracking: {report: false}\nparams: {epochs: 2}\n")
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = hpo.run(spec, tracking_uri=store)
    model = hpo.load_model(result.parent_run_id, tracking_uri=store)
    assert torch.equal(model.x_mean, torch.zeros_like(model.x_mean))
    assert torch.equal(model.x_std, torch.ones_like(model.x_std))
    scaled = hpo.run(parse_spec(spec.read_text().replace("standardize: false", "standardize: true")
                                .replace("name: raw", "name: scaled")), tracking_uri=store)
    assert not torch.equal(hpo.load_model(scaled.parent_run_id, tracking_uri=store).x_mean, model.x_mean)
