"""Rules for the MLflow tracking URI and Optuna's storage (a URL, or a journal file), checked when a spec is loaded.

A bad store must stop hpo before anything is written: an in-memory sqlite database that
loses every record at exit, MLflow's refused file store, a database whose DB-API driver
is not installed, a sqlite file under a regular file. :func:`store_uri_problem` says what
is wrong with a URI (or ``None``). It imports nothing heavy: drivers are looked up with
:func:`importlib.util.find_spec`, never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from hpo.journal_store import journal_path
from hpo.redact import redact

#: What MLflow 3.17's tracking store registry accepts and hpo can run a study against.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
#: Optuna's RDB storage: a SQLAlchemy URL.
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

# SQLAlchemy dialect -> driver name -> (module to find, package to install); "" is the dialect's default driver
_DRIVERS: dict[str, dict[str, tuple[str, str]]] = {
    "sqlite": {"": ("sqlite3", "Python built with sqlite3"), "pysqlite": ("sqlite3", "Python built with sqlite3")},
    "postgresql": {
        "": ("psycopg2", "psycopg2-binary"), "psycopg2": ("psycopg2", "psycopg2-binary"),
        "psycopg": ("psycopg", "psycopg[binary]"), "pg8000": ("pg8000", "pg8000"),
        "psycopg2cffi": ("psycopg2cffi", "psycopg2cffi"),
    },
    "mysql": {
        "": ("MySQLdb", "mysqlclient"), "mysqldb": ("MySQLdb", "mysqlclient"), "pymysql": ("pymysql", "PyMySQL"),
        "mysqlconnector": ("mysql.connector", "mysql-connector-python"),
        "mariadbconnector": ("mariadb", "mariadb"),
    },
    "mssql": {"": ("pyodbc", "pyodbc"), "pyodbc": ("pyodbc", "pyodbc"), "pymssql": ("pymssql", "pymssql")},
}

_EXAMPLES = {
    "tracking": "sqlite:///mlruns/mlflow.db, http://HOST:5000, postgresql://USER@HOST/DB, mysql://USER@HOST/DB "
                "or databricks",
    "storage": "sqlite:///mlruns/optuna.db, postgresql://USER@HOST/DB, mysql://USER@HOST/DB or an Optuna journal "
               "file (mlruns/optuna.journal)",
}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package ("mysql" of mysql.connector)
        return False


def _sqlite_problem(uri: str, what: str) -> str | None:
    memory = (f"an in-memory sqlite database loses every record when hpo exits; give a file: "
              f"sqlite:///mlruns/{what}.db (relative) or sqlite:////abs/path/{what}.db")
    rest = uri.split(":", 1)[1]
    if rest == "//" or rest.startswith("//?"):
        return memory
    if not rest.startswith("///"):
        return f"a sqlite URL is sqlite:///relative/path/{what}.db or sqlite:////abs/path/{what}.db (got {uri!r})"
    path = rest[3:]
    path, _, query = path.partition("?")
    if path in ("", ":memory:") or "memory" in parse_qs(query).get("mode", []) or path.startswith("file::memory:"):
        return memory
    db = Path(path)
    return _file_problem(db, "database", f"sqlite:///{db / (what + '.db')}")


def _file_problem(path: Path, kind: str, example: str) -> str | None:
    """Why a store file at ``path`` (a ``kind``: database, journal) cannot be made: a folder, or under a file."""
    if path.is_dir():
        return f"{path} is a folder; name the {kind} file inside it, e.g. {example}"
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                return f"{folder} is a file, so the folder of the {kind} {path} cannot be created; choose another path"
            break
    return None


def store_uri_problem(uri: str, kind: Literal["tracking", "storage"] = "tracking") -> str | None:
    """Why ``uri`` cannot be used as a tracking URI (``kind="tracking"``) or Optuna storage URL
    (``kind="storage"``), or ``None`` when it can.

    The text is a rule a spec error can show after the key: it names the value (passwords
    redacted) and says what to write instead.
    """
    what = "mlflow" if kind == "tracking" else "optuna"
    shown = redact(uri)
    if not uri.strip():
        return f"must not be empty; leave the key out for the default, or give one of {_EXAMPLES[kind]}"
    if uri != uri.strip():
        return f"has leading or trailing spaces; remove them (got {shown!r})"
    scheme = urlsplit(uri).scheme
    raw_scheme = uri[:len(scheme)] if len(scheme) > 1 else ""  # one letter: a Windows drive, not a scheme
    if kind == "tracking" and uri in ("databricks", "databricks-uc", "uc"):
        raw_scheme = uri
    if raw_scheme and raw_scheme != raw_scheme.lower():
        return f"write the scheme in lower case ({raw_scheme.lower()}://...) (got {shown!r})"
    dialect, _, driver = raw_scheme.partition("+")
    if raw_scheme in ("", "file"):
        if kind == "storage":
            journal = journal_path(uri) if raw_scheme == "" else None
            if journal is not None:
                return _file_problem(journal, "journal", str(journal / "optuna.journal"))
            return (f"must be a SQLAlchemy URL such as sqlite:///{uri if raw_scheme == '' else 'mlruns/optuna.db'}, or "
                    f"an Optuna journal file ending in .journal or .log (got {shown!r})")
        return ("is MLflow's file store, which MLflow 3.17 refuses; use a database such as sqlite:///mlruns/mlflow.db "
                f"(mlflow migrate-filestore moves existing runs into it) (got {shown!r})")
    if raw_scheme == "mlflow-artifacts":
        return ("is an artifact location, not a tracking store; give the tracking server itself "
                f"(http://HOST:PORT) (got {shown!r})")
    if raw_scheme in ("databricks-uc", "uc"):
        return f"is a Unity Catalog model registry, not a tracking store; use databricks (got {shown!r})"
    allowed = TRACKING_SCHEMES if kind == "tracking" else STORAGE_SCHEMES
    if dialect not in allowed or (driver and dialect not in _DRIVERS):
        return f"unsupported scheme {raw_scheme!r}; use one of {_EXAMPLES[kind]} (got {shown!r})"
    if dialect in ("http", "https"):
        return None if urlsplit(uri).hostname else f"needs a host: {dialect}://HOST:PORT (got {shown!r})"
    if dialect == "databricks":
        return None
    drivers = _DRIVERS[dialect]
    if driver not in drivers:
        known = ", ".join(f"{dialect}+{d}" for d in drivers if d)
        return f"unknown driver {driver!r} for {dialect}; use one of {known} (got {shown!r})"
    module, package = drivers[driver]
    if not _importable(module):
        others = ", ".join(f"{dialect}+{d}://" for d in drivers if d and drivers[d][0] != module)
        return (f"{raw_scheme} needs the DB-API driver {module}, which is not installed; pip install {package}, "
                f"or use another driver that is installed ({others}) (got {shown!r})")
    if dialect == "sqlite":
        return _sqlite_problem(uri, what)
    return None


__all__ = ["STORAGE_SCHEMES", "TRACKING_SCHEMES", "store_uri_problem"]
