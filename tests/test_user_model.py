"""A model factory named in the spec (``model: {factory: module:attr, params: {...}}``), end to end.

Every factory module is written into ``tmp_path`` by the test (never importable from the repository);
modules imported in this process get a unique name so that ``sys.modules`` never serves one test's
module to another.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from hpo import space
from hpo.errors import SpecError
from hpo.models import build_model, check_build
from hpo.spec import Choice, Fixed, Range, load_spec
from tests.conftest import run_cli

NET = """\
    import math
    from typing import Literal

    from torch import nn


    class Net(nn.Module):
        def __init__(self, n_in, n_out, hidden, blocks, gate, act):
            super().__init__()
            layers = [nn.Flatten(), nn.Linear(n_in, hidden)]
            for _ in range(blocks - 1):
                layers += [nn.GELU() if act == "gelu" else nn.ReLU(), nn.Linear(hidden, hidden)]
            self.body = nn.Sequential(*layers)
            self.gate = nn.Sigmoid() if gate else nn.Identity()
            self.head = nn.Linear(hidden, n_out)

        def forward(self, x):
            return self.head(self.gate(self.body(x)))  # (B, n_out)


    def build(input_shape, n_outputs, hidden: int = 32, blocks: int = 1, gate: bool = False,
              act: Literal["relu", "gelu"] = "relu", drop: float = 0.0, width: int | None = None):
        return Net(math.prod(input_shape), n_outputs, hidden, blocks, gate, act)
"""

SPEC = """\
    name: {name}
    data: {{dataset: iris}}
    model:
      factory: {module}:build
      params:
        hidden: {{low: 8, high: 32, log: true}}
        blocks: [1, 2]
        gate: {{choices: [false, true], when: {{blocks: [2]}}}}
        act: gelu
    search: {{n_trials: {n_trials}, pruner: median, seed: 3}}
    cv: {{folds: 3}}
    params:
      lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
      epochs: 3
      optimizer: {{choices: [adam, sgd], when: {{model.blocks: [2]}}}}
    tracking: {{report: false}}
"""

_ids = itertools.count()


def _project(folder: Path, module: str | None = None, net: str = NET, **spec) -> Path:
    """Write ``module.py`` and ``spec.yaml`` into ``folder``; returns the spec's path."""
    module = module or f"usernets_{os.getpid()}_{next(_ids)}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(net))
    path = folder / "spec.yaml"
    path.write_text(textwrap.dedent(SPEC).format(**{"name": "own", "module": module, "n_trials": 4, **spec}))
    return path


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


# =========================================================================== the spec


def test_factory_params_join_the_space_as_model_keywords(tmp_path: Path):
    spec = load_spec(_project(tmp_path))
    assert spec.is_factory_model and spec.model.endswith(":build")
    by_name = {p.name: p for p in spec.space}
    assert by_name["model.hidden"] == Range("model.hidden", 8, 32, True, log=True)
    assert by_name["model.blocks"] == Choice("model.blocks", (1, 2))
    assert by_name["model.gate"].when == (("model.blocks", (2,)),)  # a sibling keyword
    assert by_name["model.act"] == Fixed("model.act", "gelu")
    assert by_name["optimizer"].when == (("model.blocks", (2,)),)  # a training parameter on a model keyword
    # the built-ins' architecture parameters are neither defaulted nor resolved for a factory
    params = space.resolve(spec, {"model.hidden": 9, "model.blocks": 1})
    assert not {"depth", "width", "activation", "batch_norm", "dropout"} & set(params)
    assert not {"depth", "width", "activation", "batch_norm", "dropout"} & set(spec.fixed_params())
    assert {k: v for k, v in params.items() if k.startswith("model.")} == {
        "model.hidden": 9, "model.blocks": 1, "model.act": "gelu"}  # gate is off: the factory's default applies
    assert "model.gate" in space.resolve(spec, {"model.hidden": 9, "model.blocks": 2, "model.gate": True})


def test_float_keyword_with_integer_bounds_is_a_float_range(tmp_path: Path):
    path = _project(tmp_path)
    path.write_text(path.read_text().replace("act: gelu", "act: gelu\n    drop: {low: 0, high: 1}"))
    drop = {p.name: p for p in load_spec(path).space}["model.drop"]
    assert isinstance(drop, Range) and not drop.is_int and (drop.low, drop.high) == (0.0, 1.0)


def test_built_in_models_are_not_factories(tmp_path: Path):
    path = tmp_path / "b.yaml"
    path.write_text("name: b\ndata: {dataset: iris}\nmodel: mlp\nsearch: {n_trials: 2}\n")
    spec = load_spec(path)
    assert not spec.is_factory_model
    assert space.resolve(spec, {})["depth"] == 2  # the built-in's defaults as before


def test_build_model_calls_the_factory_with_stripped_keywords(tmp_path: Path):
    spec = load_spec(_project(tmp_path))
    params = space.resolve(spec, {"model.hidden": 12, "model.blocks": 2, "model.gate": True})
    net = build_model(spec.model, input_shape=(4,), n_outputs=3, params=params)
    assert net.head.in_features == 12 and isinstance(net.gate, torch.nn.Sigmoid)
    assert isinstance(net.body[2], torch.nn.GELU) and net(torch.zeros(5, 4)).shape == (5, 3)


def test_check_build_reports_parameters_and_falls_back_to_a_batch_of_two(tmp_path: Path):
    spec = load_spec(_project(tmp_path))
    built = check_build(spec, (4,), 3)
    assert (built.batch, built.output_shape, built.note) == (0, (0, 3), "")
    assert built.n_parameters == 4 * 8 + 8 + 8 * 3 + 3  # the first value of each parameter: hidden 8, 1 block
    flat = NET.replace("return self.head(self.gate(self.body(x)))", "return self.head(self.body(x.view(x.shape[0], -1)))")
    spec = load_spec(_project(tmp_path / "flat", net=flat))
    built = check_build(spec, (4,), 3)
    assert built.batch == 2 and built.output_shape == (2, 3) and "reshape" in built.note


@pytest.mark.slow
def test_entry_point_name_selects_an_installed_factory(tmp_path: Path):
    """``model: NAME`` finds an ``hpo.models`` entry point of an installed distribution (a real dist-info)."""
    site = tmp_path / "site"
    (site / "mypkg").mkdir(parents=True)
    (site / "mypkg" / "__init__.py").write_text("")
    (site / "mypkg" / "models.py").write_text(textwrap.dedent(NET))
    info = site / "mypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpo.models]\ntinynet = mypkg.models:build\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "s.yaml").write_text("name: e\ndata: {dataset: iris}\nmodel: tinynet\nsearch: {n_trials: 2}\n")
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    def validate() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hpo", "validate", "s.yaml"], cwd=work, capture_output=True,
                              text=True, timeout=120, env=env)

    proc = validate()
    assert proc.returncode == 0, proc.stderr
    n = 4 * 32 + 32 + 32 * 3 + 3  # the factory's defaults: hidden 32, one block
    assert f"model tinynet: {n} trainable parameters; output shape (0, 3) on a batch of 0" in proc.stdout
    (work / "s.yaml").write_text("name: e\ndata: {dataset: iris}\nmodel: tinynett\nsearch: {n_trials: 2}\n")
    proc = validate()
    assert proc.returncode == 2 and "s.yaml: model: must be one of mlp, cnn, resnet (got 'tinynett')" in proc.stderr
    assert "did you mean 'tinynet'?" in proc.stderr and "installed: tinynet" in proc.stderr


# =========================================================================== broken specs

# (case, module source or None for the default net, model block, params block, key path, rule)
_BUILD = "def build(input_shape, n_outputs, hidden: int = 8):\n"
BROKEN = [
    ("module_does_not_import", "import no_such_package_xyz\n", "{factory: MOD:build}", "",
     "model.factory", "cannot import module 'MOD' (ModuleNotFoundError: No module named 'no_such_package_xyz'); searched"),
    ("module_not_found", None, "{factory: nosuchmodule_xyz:build}", "",
     "model.factory", "cannot import module 'nosuchmodule_xyz'"),
    ("attribute_missing", None, "{factory: MOD:biuld}", "",
     "model.factory", "has no attribute 'biuld' (did you mean 'build'?)"),
    ("not_callable", "build = 3\n", "{factory: MOD:build}", "",
     "model.factory", "MOD:build is a int, not a function or class"),
    ("no_positional_arguments", "def build(hidden=3):\n    pass\n", "{factory: MOD:build}", "",
     "model.factory", "must take 2 positional arguments (input_shape, n_outputs)"),
    ("unknown_keyword", None, "{factory: MOD:build, params: {hiden: 8}}", "",
     "model.params.hiden", "is not a keyword of build (its keywords: hidden, blocks, gate, act, drop, width) "
                           "(did you mean 'hidden'?)"),
    ("required_keyword_missing", _BUILD.replace("hidden: int = 8", "hidden: int") + "    pass\n",
     "{factory: MOD:build}", "", "model.params.hidden", "build's keyword 'hidden' has no default: give it a value"),
    ("int_keyword_float_range", None, "{factory: MOD:build, params: {hidden: {low: 0.5, high: 8.0}}}", "",
     "model.params.hidden", "0.5 does not fit the annotation int of build's keyword 'hidden'"),
    ("float_keyword_string", None, "{factory: MOD:build, params: {drop: lots}}", "",
     "model.params.drop", "'lots' does not fit the annotation float"),
    ("bool_keyword_numbers", None, "{factory: MOD:build, params: {gate: [0, 1]}}", "",
     "model.params.gate", "0 does not fit the annotation bool"),
    ("literal_keyword_other_value", None, "{factory: MOD:build, params: {act: [relu, swish]}}", "",
     "model.params.act", "'swish' does not fit the annotation Literal['relu', 'gelu']"),
    ("optional_keyword_string", None, "{factory: MOD:build, params: {width: wide}}", "",
     "model.params.width", "'wide' does not fit the annotation int | None"),
    ("architecture_param_under_params", None, "{factory: MOD:build}", "params: {depth: 3}",
     "params.depth", "a model factory takes its own keywords: put the factory's keyword under model.params:"),
    ("when_names_unknown_keyword", None, "{factory: MOD:build, params: {gate: {choices: [true], when: {blokcs: [2]}}}}",
     "", "model.params.gate.when.blokcs", "names a parameter that is not in params"),
    ("target_as_plain_string", None, "MOD:build", "", "model", "goes under model.factory"),
    ("unknown_model_key", None, "{factory: MOD:build, parms: {}}", "", "model.parms",
     "unknown key; valid keys here: factory, params (did you mean 'params'?)"),
    ("factory_raises_at_build", _BUILD + "    raise ValueError('hidden is too small for this data')\n",
     "{factory: MOD:build}", "", "model.factory",
     "the factory raised ValueError: hidden is too small for this data when called as MOD:build"),
    ("factory_returns_no_module", _BUILD + "    return 'a network'\n", "{factory: MOD:build}", "",
     "model.factory", "must return a torch.nn.Module; model factory MOD:build returned a str"),
    ("wrong_output_shape", "from torch import nn\n" + _BUILD + "    return nn.Linear(input_shape[0], 7)\n",
     "{factory: MOD:build}", "", "model.factory",
     "the model must map (B, *input_shape) to (B, n_outputs) = (0, 3) for this data, but a batch of shape (0, 4) "
     "gave shape (0, 7)"),
]


@pytest.mark.parametrize(("case", "source", "model", "params", "key", "rule"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_factory_spec_exits_2_naming_file_key_and_rule(tmp_path: Path, case, source, model, params, key, rule):
    module = f"nets_{case}"
    (tmp_path / f"{module}.py").write_text(source if source is not None else textwrap.dedent(NET))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bad\ndata: {{dataset: iris}}\nmodel: {model.replace('MOD', module)}\n"
                    f"search: {{n_trials: 2}}\n{params}\n")
    before = _files(tmp_path)
    proc = run_cli("validate", str(spec), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if f"{spec}: {key}: " in line]
    assert any(rule.replace("MOD", module) in line for line in lines), proc.stderr
    assert _files(tmp_path) == before  # no store, no __pycache__, nothing


def test_run_refuses_a_factory_that_does_not_import_before_writing(tmp_path: Path):
    (tmp_path / "badnets.py").write_text("raise RuntimeError('broken on purpose')\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: bad\ndata: {dataset: iris}\nmodel: {factory: badnets:build}\nsearch: {n_trials: 2}\n")
    before = _files(tmp_path)
    proc = run_cli("run", str(spec), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{spec}: model.factory: cannot import module 'badnets' (RuntimeError: broken on purpose)" in proc.stderr
    assert _files(tmp_path) == before


@pytest.mark.parametrize("case", ["factory_raises_at_build", "factory_returns_no_module", "wrong_output_shape"])
def test_run_builds_the_factory_model_once_before_any_trial(tmp_path: Path, case):
    """The build-time checks of hpo validate hold for hpo run too, before anything is written."""
    _, source, model, params, key, rule = next(b for b in BROKEN if b[0] == case)
    module = f"runnets_{case}"
    (tmp_path / f"{module}.py").write_text(source)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bad\ndata: {{dataset: iris}}\nmodel: {model.replace('MOD', module)}\n"
                    f"search: {{n_trials: 2}}\n{params}\n")
    before = _files(tmp_path)
    proc = run_cli("run", str(spec), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert any(f"{spec}: {key}: " in line and rule.replace("MOD", module) in line for line in proc.stderr.splitlines())
    assert _files(tmp_path) == before


# =========================================================================== end to end

_LOAD = """\
import sys
import mlflow
import numpy as np
import torch

import hpo

uri, parent = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
pred = mlflow.pyfunc.load_model("models:/own/1").predict(x)
net = hpo.load_model(parent, tracking_uri=uri)
with torch.no_grad():
    out = net(torch.from_numpy(x)).numpy()
assert np.allclose(np.asarray(pred), out, atol=1e-5), (pred, out)
print("shapes", np.asarray(pred).shape, out.shape)
"""


@pytest.mark.slow
def test_factory_study_end_to_end_registered_model_loads_elsewhere_and_resume_checks_code(tmp_path: Path):
    proj = tmp_path / "proj"
    spec = _project(proj, module="mynets")  # a fresh process per CLI call: one name is enough
    proc = run_cli("run", "spec.yaml", cwd=proj)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(store, registry_uri=store)
    exp = client.get_experiment_by_name("own")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    children = [r for r in runs if r.data.tags.get("hpo.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {"model.hidden", "model.blocks", "model.act", "lr"} <= set(child.data.params)
        assert not {"depth", "width", "activation", "batch_norm", "dropout"} & set(child.data.params)
        assert f"model.hidden={child.data.params['model.hidden']}" in child.info.run_name
        assert ("model.gate" in child.data.params) == (child.data.params["model.blocks"] == "2")
    assert "best_model.hidden" in parent.data.params
    assert [str(v.version) for v in client.search_model_versions("name='own'")] == ["1"]

    # the registered model and the checkpoint load in a fresh process elsewhere, without mynets on the path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "load.py").write_text(_LOAD)
    proc = subprocess.run([sys.executable, "load.py", store, parent.info.run_id], cwd=elsewhere, capture_output=True,
                          text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert "shapes (5, 3) (5, 3)" in proc.stdout

    # unchanged code resumes; an edited factory file is refused, naming it
    proc = run_cli("run", "spec.yaml", "--resume", "--n-trials", "5", cwd=proj)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    module = proj / "mynets.py"
    module.write_text(module.read_text().replace("nn.Linear(hidden, n_out)", "nn.Linear(hidden, n_out, bias=False)"))
    proc = run_cli("run", "spec.yaml", "--resume", "--n-trials", "6", cwd=proj)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"spec.yaml: model.code_hash: the model factory's source file {module} changed since the study started" \
        in proc.stderr
    assert len(MlflowClient(store).search_runs([exp.experiment_id])) == 6  # nothing new was started
    assert spec.exists()


def test_factory_checkpoint_records_the_factory_and_rebuilds_through_build_model(tmp_path: Path):
    from hpo.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint

    spec = load_spec(_project(tmp_path))
    params = space.resolve(spec, {"model.hidden": 10, "model.blocks": 1})
    net = build_model(spec.model, input_shape=(4,), n_outputs=3, params=params)
    from hpo.training import Standardized

    wrapped = Standardized(net, torch.zeros(4), torch.ones(4), False)
    path = save_checkpoint(tmp_path / "c.pt", model=spec.model, params=params, input_shape=(4,), n_outputs=3,
                           regression=False, state=wrapped.state_dict())
    blob = read_checkpoint(path)  # weights_only=True
    assert blob["factory"]["target"] == spec.model
    assert blob["factory"]["kwargs"] == {"hidden": 10, "blocks": 1, "act": "gelu"}
    assert blob["factory"]["path"] == str(tmp_path) and len(blob["factory"]["code_hash"]) == 12
    again = model_from_checkpoint(blob)
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(again(x), wrapped.eval()(x))


def test_spec_error_for_factory_is_a_spec_error_in_process(tmp_path: Path):
    path = _project(tmp_path)
    path.write_text(path.read_text().replace("hidden: {low: 8", "hiddn: {low: 8"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert f"{path}: model.params.hiddn: is not a keyword of build" in str(info.value)
