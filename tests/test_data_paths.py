"""data.path that is not what a loader expects (devices, FIFOs, files for folders), and data
errors attributed to the spec: file, key and resolved path (issue 12)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hpo.data import load_dataset, load_spec_dataset
from hpo.errors import DataError
from hpo.spec import load_spec
from tests.conftest import run_cli


def _class_csv(rows: int = 20) -> str:
    return "a,b,label\n" + "".join(f"{i},{i * 0.5},{['cat', 'dog'][i % 2]}\n" for i in range(rows))


def _load_in_thread(fn) -> BaseException | None:
    """Run ``fn`` with a deadline: a loader that opens a FIFO would wait for a writer forever."""
    out: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            out.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(15)
    assert not worker.is_alive(), "the loader blocked"
    return out[0]


def test_csv_path_that_is_a_fifo_says_so_and_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    exc = _load_in_thread(lambda: load_dataset("csv", path=fifo, target="y", task="regression"))
    assert isinstance(exc, DataError)
    assert str(exc) == f"CSV file is a FIFO (named pipe), not a regular file: {fifo}; set data.path to the CSV file"


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_csv_path_that_is_a_device_says_so(device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    with pytest.raises(DataError, match=f"CSV file is a character device, not a regular file: {device}"):
        load_dataset("csv", path=device, target="y", task="regression")


def test_csv_path_that_is_a_folder_still_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="CSV file is a folder, not a regular file"):
        load_dataset("csv", path=tmp_path, target="y", task="regression")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_folder_dataset_path_that_is_a_fifo_or_file_says_so(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    exc = _load_in_thread(lambda: load_dataset(name, path=fifo))
    assert isinstance(exc, DataError)
    assert f"data.path {fifo} is a FIFO (named pipe)" in str(exc) and "missing" not in str(exc)
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(DataError, match=f"data.path {plain} is a regular file; set data.path to the folder"):
        load_dataset(name, path=plain, download=True)


# ---------------------------------------------------------------------------- errors name the spec


def _write_spec(folder: Path, data: str) -> Path:
    spec = folder / "study.yaml"
    spec.write_text(f"name: t\ndata: {data}\nmodel: mlp\nsearch: {{n_trials: 2}}\ncv: {{folds: 2}}\n")
    return spec


def test_spec_dataset_error_names_file_key_and_resolved_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec_file = _write_spec(tmp_path, "{dataset: csv, path: data/rows.csv, target: y, task: regression}")
    with pytest.raises(DataError) as info:
        load_spec_dataset(load_spec(spec_file))
    message = str(info.value)
    assert message.startswith(f"{spec_file}: data.path: CSV file not found: data/rows.csv")
    assert message.endswith(f"(data.path 'data/rows.csv' is {tmp_path / 'data' / 'rows.csv'})")


def test_spec_dataset_error_about_the_target_names_data_target(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.csv").write_text(_class_csv())
    spec_file = _write_spec(tmp_path, "{dataset: csv, path: rows.csv, target: lable, task: classification}")
    with pytest.raises(DataError) as info:
        load_spec_dataset(load_spec(spec_file))
    message = str(info.value)
    assert message.startswith(f"{spec_file}: data.target: rows.csv: target column 'lable' not found")
    assert "Did you mean 'label'?" in message and f"is {tmp_path / 'rows.csv'})" in message


def test_spec_dataset_loads_and_matches_load_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.csv").write_text(_class_csv())
    spec = load_spec(_write_spec(tmp_path, "{dataset: csv, path: rows.csv, target: label, task: classification}"))
    ds = load_spec_dataset(spec)
    direct = load_dataset("csv", path="rows.csv", target="label", task="classification", seed=0)
    assert ds.class_names == ("cat", "dog") and (ds.x_test == direct.x_test).all()


def test_spec_dataset_error_for_an_absolute_path_does_not_repeat_it(tmp_path: Path) -> None:
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    spec_file = _write_spec(tmp_path, f"{{dataset: csv, path: {fifo}, target: y, task: regression}}")
    with pytest.raises(DataError) as info:
        load_spec_dataset(load_spec(spec_file))
    assert str(info.value) == (f"{spec_file}: data.path: CSV file is a FIFO (named pipe), not a regular file: "
                               f"{fifo}; set data.path to the CSV file")


@pytest.mark.slow
def test_cli_run_data_error_names_the_spec_and_writes_nothing(tmp_path: Path) -> None:
    spec_file = _write_spec(tmp_path, "{dataset: csv, path: data/rows.csv, target: y, task: regression}")
    proc = run_cli("run", str(spec_file), "--tracking-uri", f"sqlite:///{tmp_path}/mlruns/mlflow.db",
                   cwd=tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert f"{spec_file}: data.path: CSV file not found: data/rows.csv" in proc.stderr
    assert f"is {tmp_path / 'data' / 'rows.csv'})" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(tmp_path.rglob("*")) == [spec_file]
