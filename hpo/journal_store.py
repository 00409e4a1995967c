"""Optuna's journal file as a study's storage: ``tracking.storage: mlruns/optuna.journal``.

A path with no URL scheme ending in ``.journal`` or ``.log`` names an Optuna journal file
(``optuna.storages.JournalStorage`` over ``JournalFileBackend``, as Optuna's own CLI and
optuna-dashboard open such a path). Optuna's RDB storage spends 40–90 ms of the driver's CPU on one
trial's writes on sqlite (ask, suggests, attributes, tell: a transaction each); the journal appends the
same operations to the file in ~14 ms (BENCHMARKS.md §3). Its writers are the driver and the epoch
sink (a thread locally; on Ray an actor pinned to the driver's node), so a file on the driver's
machine also serves a study whose trials run on a cluster.

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
    """Optuna's JournalStorage on the file ``path`` (made, with its folder, when missing)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))
