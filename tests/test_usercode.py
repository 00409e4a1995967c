"""Finding and checking user code named by ``factory:`` keys (hpo.usercode); the modules live in tmp_path."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from hpo.usercode import UserCodeError, check_kwargs, code_folder, load_target, parse_target, source_hash

NETS = '''
from __future__ import annotations
from typing import Literal

def build(input_shape, n_outputs, hidden: int = 32, gate: bool = False, act: Literal["relu", "gelu"] = "relu",
          scale: float | None = None):
    return ("built", input_shape, n_outputs, hidden)

def needs(input_shape, n_outputs, must: int):
    return None

def one_arg(x):
    return x

NOT_CALLABLE = 3
'''


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A module ``nets_<id>`` beside a spec file in tmp_path/project, and a cwd elsewhere."""
    name = f"nets_{tmp_path.name.replace('-', '_')}"
    _write(tmp_path / "project", f"{name}.py", NETS)
    monkeypatch.chdir(tmp_path)
    yield name, tmp_path / "project" / "spec.yaml"
    sys.modules.pop(name, None)


def test_parse_target():
    assert parse_target("pkg.sub.mod:build") == ("pkg.sub.mod", "build")
    assert parse_target("mod:Cls.make") == ("mod", "Cls.make")
    for bad in ("mod", "mod:", ":build", "mod:build:x", "1mod:build", "mod build:x"):
        assert parse_target(bad) is None


def test_the_spec_folder_is_searched_and_not_left_on_sys_path(nets):
    name, spec = nets
    fn = load_target(f"{name}:build", spec_path=spec)
    assert fn((4,), 3) == ("built", (4,), 3, 32)
    assert str(spec.parent) not in sys.path
    assert source_hash(fn) and code_folder(fn) == (spec.parent / f"{name}.py").resolve()


def test_the_spec_folder_comes_before_the_working_directory(tmp_path, monkeypatch):
    name = f"twice_{tmp_path.name.replace('-', '_')}"
    _write(tmp_path / "project", f"{name}.py", "def f():\n    return 'spec folder'\n")
    _write(tmp_path / "cwd", f"{name}.py", "def f():\n    return 'cwd'\n")
    monkeypatch.chdir(tmp_path / "cwd")
    try:
        assert load_target(f"{name}:f", spec_path=tmp_path / "project" / "spec.yaml")() == "spec folder"
    finally:
        sys.modules.pop(name, None)


def test_an_installed_entry_point_is_found_by_name(tmp_path, monkeypatch):
    name = f"plug_{tmp_path.name.replace('-', '_')}"
    _write(tmp_path / "site", f"{name}.py", "def build(input_shape, n_outputs):\n    return 'plugged'\n")
    dist = tmp_path / "site" / f"{name}-0.1.dist-info"
    _write(dist, "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    _write(dist, "entry_points.txt", f"[hpo.models]\ntransformer_{name} = {name}:build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        assert load_target(f"transformer_{name}", group="hpo.models")((1,), 1) == "plugged"
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(("target", "message"), [
    ("missing_module_xyz:build", "cannot import module 'missing_module_xyz' (ModuleNotFoundError"),
    ("{name}:buidl", "has no attribute 'buidl' (did you mean 'build'?)"),
    ("{name}:NOT_CALLABLE", "is a int, not a function or class"),
    ("no_colon", "must be 'module:attribute'"),
])
def test_bad_targets_say_why(nets, target, message):
    name, spec = nets
    with pytest.raises(UserCodeError) as err:
        load_target(target.format(name=name), spec_path=spec, group="hpo.models")
    assert message in str(err.value)
    if "cannot import" in message:
        assert str(spec.parent) in str(err.value)  # the folders searched


def test_a_module_that_raises_on_import_reports_its_error(tmp_path):
    name = f"broken_{tmp_path.name.replace('-', '_')}"
    _write(tmp_path, f"{name}.py", "raise RuntimeError('no GPU here')\n")
    with pytest.raises(UserCodeError, match="RuntimeError: no GPU here"):
        load_target(f"{name}:f", spec_path=tmp_path / "spec.yaml")


def test_check_kwargs_names_every_problem(nets):
    name, spec = nets
    fn = load_target(f"{name}:build", spec_path=spec)
    positional = ("input_shape", "n_outputs")
    assert check_kwargs(fn, {"hidden": [16, 128], "gate": [False, True], "act": ["gelu"], "scale": [None, 0.5]},
                        positional=positional) == []
    problems = dict(check_kwargs(fn, {"hiden": [16], "hidden": [1.5], "gate": [1], "act": ["tanh"],
                                      "scale": ["x"], "n_outputs": [3]}, positional=positional))
    assert "did you mean 'hidden'?" in problems["hiden"]
    assert "1.5 does not fit the annotation int" in problems["hidden"]
    assert "1 does not fit the annotation bool" in problems["gate"]
    assert "'tanh' does not fit" in problems["act"]
    assert "'x' does not fit" in problems["scale"]
    assert "hpo passes itself" in problems["n_outputs"]
    needs = load_target(f"{name}:needs", spec_path=spec)
    assert check_kwargs(needs, {}, positional=positional) == [("must", "needs's keyword 'must' has no default: "
                                                                       "give it a value")]
    one = load_target(f"{name}:one_arg", spec_path=spec)
    assert "must take 2 positional arguments" in check_kwargs(one, {}, positional=positional)[0][1]


def test_a_module_of_the_same_name_in_another_spec_folder_is_that_folders(tmp_path, monkeypatch):
    """Two specs in one process, each beside its own mynets.py: each gets its own module."""
    name = f"same_{tmp_path.name.replace('-', '_')}"
    _write(tmp_path / "a", f"{name}.py", "def f():\n    return 'a'\n")
    _write(tmp_path / "b", f"{name}.py", "def f():\n    return 'b'\n")
    monkeypatch.chdir(tmp_path)
    try:
        assert load_target(f"{name}:f", spec_path=tmp_path / "a" / "spec.yaml")() == "a"
        assert load_target(f"{name}:f", spec_path=tmp_path / "b" / "spec.yaml")() == "b"
        first = load_target(f"{name}:f", spec_path=tmp_path / "b" / "spec.yaml")
        assert first is load_target(f"{name}:f", spec_path=tmp_path / "b" / "spec.yaml")  # same file: kept
    finally:
        sys.modules.pop(name, None)
