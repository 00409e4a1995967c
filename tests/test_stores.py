"""Damaged and unwritable sqlite stores: one clear message and exit 2, never a traceback, nothing written.

One real study (iris, 2 trials, 2 folds, 2 epochs) is run once in a subprocess, so its store is
settled (no live WAL). Each test works on a copy of its ``mlruns/`` and damages or locks that copy.

Root ignores file permissions, so a store "the user may only read" is made real by running the CLI
without the capabilities that let root override them (``setpriv`` dropping ``CAP_DAC_OVERRIDE`` and
``CAP_DAC_READ_SEARCH``); as any other user, ``chmod`` is enough.
"""

from __future__ import annotations

import random
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # every test runs the CLI on a copy of a real study's store

NAME = "stores-tiny"
SPEC = f"""
name: {NAME}
data: {{dataset: iris}}
model: mlp
search: {{sampler: random, n_trials: 2, seed: 0}}
cv: {{folds: 2}}
params:
  lr: {{low: 1.0e-3, high: 1.0e-1, log: true}}
  epochs: 2
"""


@pytest.fixture(scope="module")
def study_store(tmp_path_factory) -> Path:
    """A finished study's ``mlruns/`` folder (mlflow.db, optuna.db, artifacts), all connections closed."""
    tmp = tmp_path_factory.mktemp("stores")
    (tmp / "spec.yaml").write_text(SPEC)
    proc = run_cli("run", "spec.yaml", "--tracking-uri", f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp / "mlruns"


@pytest.fixture
def copy(study_store, tmp_path) -> Path:
    """A private copy of the study's store under ``tmp_path/mlruns`` (with the spec beside it)."""
    dst = tmp_path / "mlruns"
    shutil.copytree(study_store, dst)
    (tmp_path / "spec.yaml").write_text(SPEC)
    return dst


def _uri(mlruns: Path) -> str:
    return f"sqlite:///{mlruns / 'mlflow.db'}"


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` (dot files too) with its size and mtime."""
    out = {".": (0, folder.stat().st_mtime_ns)} if folder.exists() else {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(folder))] = (st.st_size if not p.is_dir() else 0, st.st_mtime_ns)
    return out


# ---------------------------------------------------------------------------------------------- damage

def _truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _empty(f: Path) -> None:
    f.write_bytes(b"")


def _garbage(f: Path) -> None:
    f.write_bytes(random.Random(0).randbytes(f.stat().st_size))


def _zero_pages(f: Path) -> None:
    """Header and size intact, a run of pages zeroed: only sqlite's own check can tell."""
    data = bytearray(f.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    start, stop = page, min(len(data), page * 6)
    data[start:stop] = bytes(stop - start)
    f.write_bytes(bytes(data))


DAMAGES = [
    ("mlflow.db", _truncate, "it is truncated"),
    ("optuna.db", _truncate, "it is truncated"),
    ("mlflow.db", _empty, "the file is empty"),
    ("optuna.db", _garbage, "it is not an SQLite database"),
    ("optuna.db", _zero_pages, "quick_check"),
    ("mlflow.db", _zero_pages, "quick_check"),
]
IDS = [f"{f.split('.')[0]}-{d.__name__.strip('_')}" for f, d, _ in DAMAGES]


def _assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


@pytest.mark.parametrize(("file", "damage", "why"), DAMAGES, ids=IDS)
def test_readers_refuse_a_damaged_store_and_change_nothing(copy, file, damage, why):
    damage(copy / file)
    before = _snapshot(copy)
    for args in (["show", NAME], ["compare", NAME], ["report", NAME, "--no-model"]):
        proc = run_cli(*args, "--tracking-uri", _uri(copy), cwd=copy.parent)
        _assert_refused(proc, f"the store at {copy / file} is damaged ({why}", "restore it from a backup")
        assert _snapshot(copy) == before, args  # not re-created, migrated, or touched
        assert proc.stdout.strip() == ""  # no table of wrong rows


@pytest.mark.parametrize(("file", "damage", "why", "resume"),
                         [(*d, resume) for d, resume in zip(DAMAGES[:4], (True, True, False, False), strict=True)], ids=IDS[:4])
def test_writers_refuse_a_damaged_store_before_anything_runs(copy, file, damage, why, resume):
    damage(copy / file)
    before = _snapshot(copy)
    proc = run_cli("run", "spec.yaml", "--tracking-uri", _uri(copy), *(["--resume"] if resume else []),
                   cwd=copy.parent)
    _assert_refused(proc, f"the store at {copy / file} is damaged ({why}")
    assert "trial" not in proc.stdout.lower()  # nothing was trained
    assert _snapshot(copy) == before


def test_a_missing_store_is_an_error_and_nothing_is_created(copy, tmp_path):
    empty = tmp_path / "nowhere"
    empty.mkdir()
    for args in (["show", NAME], ["compare", NAME]):
        proc = run_cli(*args, "--tracking-uri", _uri(empty / "mlruns"), cwd=empty)
        _assert_refused(proc, "no studies in")
        assert list(empty.iterdir()) == []
    # Optuna's half is there, MLflow's is gone: compare must not make a new, empty mlflow.db
    (copy / "mlflow.db").unlink()
    before = _snapshot(copy)
    proc = run_cli("compare", NAME, "--tracking-uri", _uri(copy), cwd=tmp_path)
    _assert_refused(proc, f"no store at {copy / 'mlflow.db'}")
    assert _snapshot(copy) == before


# ---------------------------------------------------------------------------------------------- read-only

def _chmod_tree(folder: Path, writable: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        w = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~w)


@pytest.fixture
def read_only(copy):
    """The copy with every file and folder read-only (made writable again afterwards, for clean-up)."""
    _chmod_tree(copy, writable=False)
    yield copy
    _chmod_tree(copy, writable=True)


def test_readers_work_on_a_store_the_user_may_only_read(read_only, as_user):
    before = _snapshot(read_only)
    show = as_user("show", NAME, "--tracking-uri", _uri(read_only), "--json", cwd=read_only.parent)
    assert show.returncode == 0, show.stderr[-3000:]
    assert '"metric": "accuracy"' in show.stdout and show.stdout.count('"state": "complete"') == 2
    compare = as_user("compare", NAME, "--tracking-uri", _uri(read_only), "--json", cwd=read_only.parent)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert '"dataset": "iris"' in compare.stdout  # read from the MLflow parent run
    assert _snapshot(read_only) == before  # no -wal, -shm or lock file appeared


def test_report_on_a_read_only_store_says_it_must_write(read_only, as_user):
    before = _snapshot(read_only)
    proc = as_user("report", NAME, "--no-model", "--tracking-uri", _uri(read_only), cwd=read_only.parent)
    _assert_refused(proc, "hpo report draws its plots onto the study's parent run, so it must write the store",
                    f"cannot write to the store folder {read_only}")
    assert _snapshot(read_only) == before


def test_a_run_on_a_read_only_folder_stops_before_anything_starts(read_only, as_user):
    before = _snapshot(read_only)
    proc = as_user("run", "spec.yaml", "--tracking-uri", _uri(read_only), "--resume", cwd=read_only.parent)
    _assert_refused(proc, f"cannot write to the store folder {read_only}: permission denied", "chmod u+w")
    assert _snapshot(read_only) == before


def test_a_read_only_store_file_in_a_writable_folder_is_refused(copy, as_user):
    db = copy / "optuna.db"
    db.chmod(0o444)
    before = _snapshot(copy)
    proc = as_user("run", "spec.yaml", "--tracking-uri", _uri(copy), "--resume", cwd=copy.parent)
    _assert_refused(proc, f"the store file {db} is read-only")
    assert _snapshot(copy) == before


def test_a_new_store_under_a_folder_the_user_may_not_write(tmp_path, as_user):
    locked = tmp_path / "locked"
    locked.mkdir()
    (tmp_path / "spec.yaml").write_text(SPEC)
    locked.chmod(0o555)
    try:
        proc = as_user("run", "spec.yaml", "--tracking-uri", f"sqlite:///{locked / 'sub' / 'mlflow.db'}",
                       cwd=tmp_path)
        _assert_refused(proc, f"cannot write to the store folder {locked} (to make {locked / 'sub'})")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_a_read_only_store_with_unsaved_wal_changes(read_only, as_user):
    """A study killed mid-write leaves its last changes in optuna.db-wal: readers must see them."""
    folder = read_only
    folder.chmod(0o755)
    db = folder / "optuna.db"
    db.chmod(0o644)
    writer = ("import os, sqlite3, sys\n"
              "con = sqlite3.connect(sys.argv[1]); con.execute('PRAGMA journal_mode=WAL')\n"
              "con.execute('PRAGMA wal_autocheckpoint=0')\n"
              "con.execute('UPDATE trial_values SET value = 0.123456 WHERE trial_id = 1'); con.commit()\n"
              "os._exit(0)  # no close: the change stays in the -wal, as after kill -9\n")
    subprocess.run([sys.executable, "-c", writer, str(db)], check=True)
    assert (folder / "optuna.db-wal").stat().st_size > 0
    _chmod_tree(folder, writable=False)
    before = _snapshot(folder)
    show = as_user("show", NAME, "--tracking-uri", _uri(folder), "--json", cwd=folder.parent)
    assert show.returncode == 0, show.stderr[-3000:]
    assert '"value": 0.123456' in show.stdout
    assert _snapshot(folder) == before
    # without its -shm, sqlite cannot read that WAL in a folder it may not write: say so, do not call it damage
    folder.chmod(0o755)
    (folder / "optuna.db-shm").unlink()
    folder.chmod(0o555)
    proc = as_user("show", NAME, "--tracking-uri", _uri(folder), cwd=folder.parent)
    _assert_refused(proc, f"cannot open the store at {db} read-only: it holds changes in optuna.db-wal")
    assert "damaged" not in proc.stderr
