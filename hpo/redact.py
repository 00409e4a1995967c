"""Passwords out of everything hpo prints, logs or saves: one function for URIs and text,
one for nested spec data. Imports nothing heavy (the spec loader and the CLI use it)."""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<secret>[^@\s]+)@", re.I)


def redact(text: str) -> str:
    """Replace passwords in URLs (``scheme://user:password@host``) with ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
