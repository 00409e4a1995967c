"""What a trial prints and logs, kept for its child run's ``logs/trial.log``; the driver's own log for the
parent run's ``logs/study.log``.

While a trial runs (:func:`capture`, where it runs: a Ray worker or a thread of the local executor),
what its threads write to ``sys.stdout``/``sys.stderr``, the ``logging`` records they emit (at the
levels the loggers are set to) and the warnings they raise go to its :class:`TrialLog` as well as
where they went before. Concurrent local trials are told apart by thread: a trial's helper threads
(a user objective's folds) join its log with :func:`adopt`. Python shows a warning once per place in
the code and process unless filters say otherwise, so a later trial may not repeat an earlier one's.
A failed trial's log ends with the full traceback. Each log keeps its last ``max_bytes``. Output written by C/C++ code straight to the file
descriptors (not through ``sys.stdout``) is not seen.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class TrialLog:
    """The last ``max_bytes`` of one trial's (or the driver's) output, and a failure's traceback."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._parts: deque[str] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self.dropped = 0
        self.failure = ""

    def write(self, text: str) -> None:
        if not text or self.max_bytes <= 0:
            return
        with self._lock:
            self._parts.append(text)
            self._size += len(text)
            while self._size > self.max_bytes and len(self._parts) > 1:
                gone = self._parts.popleft()
                self._size -= len(gone)
                self.dropped += len(gone)

    def fail(self, exc: BaseException, where: str = "") -> None:
        """Keep ``exc``'s full traceback to end the log with."""
        head = f"\ntrial failed{where}:\n"
        self.failure += head + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def text(self) -> str:
        """The log: what was kept (the start cut when it ran over), then the failure's traceback."""
        with self._lock:
            body = "".join(self._parts)
        if len(body) > self.max_bytes:
            body = body[-self.max_bytes:]
        cut = self.dropped + self._size - len(body)
        if cut:
            body = f"[... the first {cut} characters are cut: the log keeps its last {self.max_bytes} " \
                   "(tracking.log_max_kb)]\n" + body
        return body + self.failure


_routes: dict[int, TrialLog] = {}  # thread id -> the log of the trial it works for
_lock = threading.Lock()
_saved: dict[str, Any] = {}


class _Stream:
    """``sys.stdout``/``sys.stderr`` while trials run: every write goes where it went, and a trial thread's
    also into its log."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def write(self, text: str) -> int:
        log = _routes.get(threading.get_ident())
        if log is not None:
            log.write(text)
        return self.inner.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self.inner, name)


class _Records(logging.Handler):
    """Log records of trial threads, formatted into their logs."""

    def emit(self, record: logging.LogRecord) -> None:
        log = _routes.get(threading.get_ident())
        if log is not None:
            try:
                log.write(FORMAT.format(record) + "\n")
            except Exception:  # noqa: BLE001 - logging must never fail the trial
                self.handleError(record)


def _showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
    """Into the trial's log once, then where warnings went before (stderr, or a test's record of them)."""
    me = threading.get_ident()
    log = _routes.pop(me, None)  # what the original writes to stderr is not captured a second time
    try:
        if log is not None:
            log.write(warnings.formatwarning(message, category, filename, lineno, line))
        _saved["showwarning"](message, category, filename, lineno, file, line)
    finally:
        if log is not None:
            _routes[me] = log


def _install() -> None:
    root = logging.getLogger()
    _saved["streams"] = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _Stream(sys.stdout), _Stream(sys.stderr)
    _saved["handler"] = handler = _Records()
    # without a handler anywhere, logging prints warnings through its last resort: keep it doing so
    _saved["last_resort"] = logging.lastResort if not root.handlers and logging.lastResort is not None else None
    root.addHandler(handler)
    if _saved["last_resort"] is not None:
        root.addHandler(_saved["last_resort"])
    _saved["showwarning"] = warnings.showwarning
    warnings.showwarning = _showwarning


def _uninstall() -> None:
    root = logging.getLogger()
    out, err = _saved.pop("streams")
    if isinstance(sys.stdout, _Stream) and sys.stdout.inner is out:  # unless someone replaced it meanwhile
        sys.stdout = out
    if isinstance(sys.stderr, _Stream) and sys.stderr.inner is err:
        sys.stderr = err
    root.removeHandler(_saved.pop("handler"))
    last = _saved.pop("last_resort")
    if last is not None:
        root.removeHandler(last)
    if warnings.showwarning is _showwarning:
        warnings.showwarning = _saved["showwarning"]


def current() -> TrialLog | None:
    """The log the calling thread writes to, if it works for a trial."""
    return _routes.get(threading.get_ident())


def note_failure(exc: BaseException, where: str = "") -> None:
    """End the calling thread's trial log (if any) with ``exc``'s full traceback."""
    log = current()
    if log is not None:
        log.fail(exc, where)


@contextmanager
def adopt(log: TrialLog | None) -> Iterator[None]:
    """The calling thread writes to ``log`` (a trial's helper thread) until the block ends."""
    if log is None:
        yield
        return
    me = threading.get_ident()
    with _lock:
        if not _routes:
            _install()
        _routes[me] = log
    try:
        yield
    finally:
        with _lock:
            _routes.pop(me, None)
            if not _routes:
                _uninstall()


@contextmanager
def capture(max_bytes: int) -> Iterator[TrialLog]:
    """A trial's :class:`TrialLog`, filled by the calling thread (and threads that :func:`adopt` it) while
    the block runs; with ``max_bytes`` 0 nothing is captured."""
    log = TrialLog(max_bytes)
    with adopt(log if max_bytes > 0 else None):
        yield log


class StudyLog(logging.Handler):
    """The driver's log records (every thread that works for no trial), for ``logs/study.log``."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.log = TrialLog(max_bytes)
        self.setFormatter(FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        if threading.get_ident() in _routes:
            return
        try:
            self.log.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001
            self.handleError(record)


@contextmanager
def study_log(max_bytes: int) -> Iterator[TrialLog | None]:
    """Keep the driver's log records while the block runs: hpo's own at INFO and above (where no one
    configured logging, so the console still shows only warnings), others at their loggers' levels."""
    if max_bytes <= 0:
        yield None
        return
    root, hpo_log = logging.getLogger(), logging.getLogger("hpo")
    handler = StudyLog(max_bytes)
    unconfigured = not root.handlers
    level = hpo_log.level
    root.addHandler(handler)
    if unconfigured and logging.lastResort is not None:
        root.addHandler(logging.lastResort)  # what printed warnings before still does
        if hpo_log.level == logging.NOTSET:
            hpo_log.setLevel(logging.INFO)
    try:
        yield handler.log
    finally:
        root.removeHandler(handler)
        if unconfigured and logging.lastResort is not None:
            root.removeHandler(logging.lastResort)
        hpo_log.setLevel(level)
