"""The spool folder of :mod:`hpo.outbox` on disk: which store its writes are for, how many wait,
which ones the store refused. Imports nothing heavy (``hpo sync`` and resume read it first).

``target.json`` records the tracking URI the waiting writes were made for, written with the
first write that waits. Run and experiment ids in those writes only exist in that store, so
:func:`resolve_target` sends them there and refuses another URI (``hpo sync`` sent them to
its default local store before, which dropped every one).

Passwords: a URI with a password (``http://user:pw@host``, ``?password=…``) is recorded
redacted, with a salted PBKDF2 hash of the whole URI to recognise it. The spool sits in
``mlruns/`` (often shared, copied into bug reports, shipped with a job), and the password may
not be on disk at all (an environment variable, a secret store); hpo does not add a copy. The
price: ``hpo sync`` then needs ``--tracking-uri`` with the real password, which the hash
confirms before anything is sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.errors import TrackingError
from hpo.redact import redact
from hpo.sqlite_store import absolute

TARGET_FILE = "target.json"
FAILED_GLOB = "failed-*.jsonl"  # writes the store refused: kept and reported, never retried on their own
OPS_GLOB = "ops-*.jsonl"
_HASH_ROUNDS = 100_000  # PBKDF2-SHA256 rounds (~50 ms here): slows guessing a weak password from the file


class SyncError(TrackingError):
    """Waiting writes were refused by the tracking store: they are kept in the spool, not sent."""

    exit_code = 1  # the input was fine; some writes could not be sent


def canonical_uri(uri: str) -> str:
    """``uri`` in the form two spellings of one store share: a sqlite file by its absolute path
    (``sqlite:///mlruns/mlflow.db`` from another folder is another file), no trailing ``/``."""
    if uri.startswith("sqlite:///"):
        return absolute(uri, resolve=True)
    return uri.rstrip("/")


def _digest(uri: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", canonical_uri(uri).encode(), bytes.fromhex(salt), _HASH_ROUNDS).hex()


@dataclass(frozen=True)
class Target:
    """The store a spool's writes are for: ``uri`` (redacted when ``secret``) and a hash to match."""

    uri: str
    salt: str
    digest: str
    secret: bool  # the URI held a password: ``uri`` is redacted and cannot be used as it is

    def matches(self, uri: str) -> bool:
        """Whether ``uri`` names the recorded store (password included)."""
        return secrets.compare_digest(_digest(uri, self.salt), self.digest)


def read_target(spool: Path) -> Target | None:
    """The store recorded in ``spool``; ``None`` when nothing was recorded (or the file is unreadable)."""
    try:
        data = json.loads((spool / TARGET_FILE).read_text(encoding="utf-8"))
        return Target(str(data["uri"]), str(data["salt"]), str(data["digest"]), bool(data["secret"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record_target(spool: Path, uri: str) -> None:
    """Record ``uri`` as the store of the writes in ``spool``, unless writes for another store wait there."""
    old = read_target(spool)
    if old is not None and (old.matches(uri) or waiting(spool) or failed_writes(spool)):
        return  # recorded already, or left by another run (resume and sync refuse the mismatch)
    full = canonical_uri(uri)
    shown = redact(full)
    salt = secrets.token_hex(16)
    spool.mkdir(parents=True, exist_ok=True)
    tmp = spool / f"{TARGET_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"uri": shown, "secret": shown != full, "salt": salt, "digest": _digest(full, salt)}),
                   encoding="utf-8")
    os.replace(tmp, spool / TARGET_FILE)


def resolve_target(spool: Path, given: str | None, *, force: bool = False, given_as: str = "--tracking-uri",
                   command: str = "hpo sync NAME") -> str:
    """The tracking URI to send the writes waiting in ``spool`` to.

    ``given``: the URI the caller has (``None``: use the recorded one). Raises :class:`TrackingError`
    (exit 2) when none is given and none is recorded, or the recorded one held a password; and when
    ``given`` names another store than the recorded one, unless ``force``. ``given_as`` says where
    ``given`` came from, ``command`` what to run, both for the messages.
    """
    target = read_target(spool)
    if given is None:
        if target is None:
            raise TrackingError(f"the writes waiting in {spool} do not record which tracking store they are for "
                                f"(an older hpo wrote them); name it: {command} --tracking-uri URI")
        if target.secret:
            raise TrackingError(f"the writes waiting in {spool} are for {target.uri}; hpo does not save its password: "
                                f"pass the URI with it: {command} --tracking-uri '{target.uri}' (the real password "
                                "in place of ***)")
        return target.uri
    if target is None or force or target.matches(given):
        return given
    shown = redact(canonical_uri(given))
    differ = " (they differ in the password)" if shown == target.uri else ""
    raise TrackingError(f"the writes waiting in {spool} were made for {target.uri}, not {shown} ({given_as}){differ}: "
                        f"their run ids only exist there. Send them there ({command} --tracking-uri "
                        f"'{target.uri}'), or, only if {shown} is that same store under another address or "
                        f"password, add --force-target to {command}")


def check_target_store(uri: str) -> None:
    """Refuse (:class:`TrackingError`) a sqlite store that does not exist: the waiting writes are for
    runs inside it, and MLflow would create an empty one that takes none of them."""
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):].partition("?")[0])
    if not db.is_file() or db.stat().st_size == 0:
        raise TrackingError(f"there is no MLflow store at {db}: the waiting writes are for runs in it, and a new "
                            "store would take none of them. Restore it, or pass the store the study used with "
                            "--tracking-uri")


def waiting(spool: Path) -> int:
    """How many writes wait in a spool folder (all processes)."""
    n = 0
    for f in sorted(spool.glob(OPS_GLOB)) if spool.is_dir() else []:
        n += sum(1 for line in f.read_text(encoding="utf-8").splitlines() if line.strip())
    return n


def failed_writes(spool: Path | None) -> list[dict[str, Any]]:
    """The writes in a spool folder that the store refused (each with its ``error``), oldest file first."""
    if spool is None or not spool.is_dir():
        return []
    ops: list[dict[str, Any]] = []
    for f in sorted(spool.glob(FAILED_GLOB), key=lambda f: f.stat().st_mtime):
        ops += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return ops


def failed_message(failed: list[dict[str, Any]], spool: Path, uri: str, sent: int = 0) -> str:
    """What :class:`SyncError` says: which writes could not be sent, why, where they are, what to do."""
    shown = [f"  {op['op']}{' of run ' + op['run'] if op.get('run') else ''}: {op.get('error', '?')}"
             for op in failed[:8]]
    if len(failed) > 8:
        shown.append(f"  ... and {len(failed) - 8} more")
    files = ", ".join(f.name for f in sorted(spool.glob(FAILED_GLOB)))
    return (f"{len(failed)} tracking writes could not be sent to {redact(uri)} ({sent} others were sent); they are "
            f"kept in {spool} ({files}):\n" + "\n".join(shown) + "\n"
            "Fix what the store refuses (a run or experiment deleted there, another store than the study's), or "
            "give these writes up by deleting those files; until then `hpo sync` and `hpo run --resume` stop here.")
