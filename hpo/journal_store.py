"""Optuna's journal file as a study's storage: ``tracking.storage: mlruns/optuna.journal``.

A path with no URL scheme ending in ``.journal`` or ``.log`` names an Optuna journal file
(``optuna.storages.JournalStorage`` over ``JournalFileBackend``, as Optuna's own CLI and
optuna-dashboard open such a path). Optuna's RDB storage on hpo's sqlite file spends ~33 ms on one
trial's writes (ask, suggests, attributes, reports, tell: a transaction each); the journal appends the
same operations to the file in ~9 ms (``python -m benchmarks.optuna_stores``, BENCHMARKS.md §3c).
Its writers are the driver and the epoch sink (a thread locally; on Ray an actor pinned to the
driver's node), so a file on the driver's machine also serves a study whose trials run on a cluster.

Relative paths are taken against the folder the study starts in (made absolute once, like a
relative ``sqlite:///`` URL), so the sink actor, whose working folder differs, writes the same file.
"""

from __future__ import annotations

from pathlib import Path

#: The names hpo takes as an Optuna journal file (Optuna's docs write ``journal.log``).
JOURNAL_SUFFIXES = (".journal", ".log")


def journal_path(uri: str) -> Path | None:
    """The journal file ``uri`` names, or ``None`` when it is a URL (any ``scheme://``)."""
    if "://" in uri or not uri.endswith(JOURNAL_SUFFIXES):
        return None
    return Path(uri)


def open_journal(path: Path):
    """Optuna's JournalStorage on the file ``path`` (made, with its folder, when missing); a file that is not an
    Optuna journal is refused (:class:`~hpo.sqlite_store.StoreError`, exit 2) before anything is written."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from hpo.sqlite_store import StoreError, damaged_message

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = JournalStorage(JournalFileBackend(str(path)))  # replays the whole file
        problem = _last_line_problem(path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON lines, or not Optuna's operations
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if problem:
        raise StoreError(damaged_message(path, f"not an Optuna journal: {problem}"))
    return storage


def _last_line_problem(path: Path) -> str | None:
    """Why the file's last whole line is not JSON, or None. Optuna skips a last line it cannot decode (another
    process may be writing it) and fails on the next write; a whole line (ending in a newline) that does not
    decode is damage, and is said before anything is written."""
    import json

    with open(path, "rb") as f:
        end = f.seek(0, 2)
        if end == 0:
            return None
        tail, pos = b"", end
        while pos > 0 and tail.count(b"\n") < 2:  # back to the newline before the last line
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
    if not tail.endswith(b"\n"):
        return None  # a line being written now: Optuna reads it once it is whole
    try:
        json.loads(tail[:-1].rsplit(b"\n", 1)[-1])
    except ValueError as exc:
        return str(exc)
    return None
