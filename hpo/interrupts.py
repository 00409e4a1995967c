"""Ctrl-C and SIGTERM for a whole study, from set-up to the report.

A study goes through phases; what the first signal does depends on the phase:

- ``setup``, ``log`` (model logging and the study's summary writes): bookkeeping that should
  not be cut in half, so the signal is noted and the study stops when the phase ends;
- ``report``: the signal is noted and the report stops before its next plot (its caller
  polls :meth:`Interrupts.check`), so nothing is cut inside a library's drawing code;
- ``search``: no new trial starts and running trials stop after their current epoch
  (``on_stop`` is called to tell them);
- ``refit``: long training that can simply be redone, so it is stopped at once.

A second signal stops at once in every phase. While the study closes its runs after a stop
(:meth:`Interrupts.closing`), further signals are counted and ignored, so a fast double or
triple Ctrl-C still leaves no run RUNNING.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

IMMEDIATE = ("refit",)


class Interrupted(Exception):
    """A signal asked the study to stop; finished trials are kept and ``--resume`` continues."""


class Interrupts:
    """Installs SIGINT/SIGTERM handlers for the duration of a study (main thread only)."""

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.on_stop = on_stop
        self.phase = "setup"
        self.signals = 0
        self._closing = False
        self._held = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the study to stop."""
        return self.signals > 0

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (a no-op outside the main thread, e.g. inside a server)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # started as a background job (or under nohup-like wrappers): keep ignoring it
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:
                pass

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def _must_raise(self) -> bool:
        if self._closing or self._held:
            return False
        return self.signals > 1 or (self.phase in IMMEDIATE and self.signals > 0)

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        if self.phase == "search" and self.signals == 1 and not self._closing:
            if self.on_stop is not None:
                self.on_stop()
            return
        if self._must_raise():
            raise KeyboardInterrupt

    def enter(self, phase: str) -> None:
        """Start ``phase``; raises :class:`Interrupted` when a signal came before it."""
        self.check()
        self.phase = phase

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal asked the study to stop."""
        if self.requested:
            raise Interrupted

    @contextmanager
    def held(self) -> Iterator[None]:
        """A few writes that belong together (ask a trial and open its run; tell it and close it): a
        signal that would stop at once waits until the block is done."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self._must_raise():
            raise KeyboardInterrupt

    @contextmanager
    def closing(self) -> Iterator[None]:
        """While the study closes its runs: signals are counted, never raised."""
        self._closing = True
        try:
            yield
        finally:
            self._closing = False
