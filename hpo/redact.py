"""Passwords out of everything hpo prints, logs or saves: one function for URIs and text
(:func:`redact`), one for nested spec data (:func:`redact_data`). Imports nothing heavy (the
spec loader, the CLI and the checkpoint writer use it).

What counts as a secret (over-redacting a value is harmless, printing a password is not):

* the password of a URL's userinfo, ``scheme://user:PASSWORD@host`` -- also with an empty
  user (``postgresql://:PASSWORD@host``), percent-encoded characters, or a raw ``@`` inside
  the password (the host starts after the *last* ``@`` before the path, as in RFC 3986).
  A user name alone (``ssh://git@host``) is kept.
* the value of a query or parameter whose key is, or ends in, a word of :data:`SECRET_WORDS`
  (``?password=…``, ``&pwd=…``, ``;token=…``, ``&X-Amz-Signature=…``, ``?db_password=…``),
  and libpq-style ``password=…`` / ``pwd=…`` / ``passwd=…`` anywhere in a text.
* in nested data (:func:`redact_data`), the value of every mapping key that matches the same
  rule (``password: hunter2``), and every string, redacted as text.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

#: A key is secret when it is one of these words or ends in one (after ``_``, ``-`` or ``.``),
#: case-insensitively: ``password``, ``db_password``, ``client_secret``, ``X-Amz-Security-Token``.
SECRET_WORDS = ("password", "passwd", "pwd", "pass", "secret", "token", "api_key", "apikey", "api-key",
                "access_key", "secret_key", "private_key", "key", "sig", "signature", "credential",
                "credentials", "auth")

_WORDS = "|".join(re.escape(w) for w in sorted(SECRET_WORDS, key=len, reverse=True))
_SECRET_KEY = re.compile(rf"(?:[\w.-]*[_.-])?(?:{_WORDS})", re.I)
# scheme:// then the authority: everything up to the path, query, fragment or the end of the word
_AUTHORITY = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<authority>[^/?#\s'\"<>`]+)", re.I)
_QUERY = re.compile(rf"(?P<key>(?<=[?&;])(?:[\w.-]*[_.-])?(?:{_WORDS})=)(?P<value>[^&#;\s'\"<>`]+)", re.I)
# libpq keyword DSNs: ``host=db password=secret``; only at the start of a word, so a URL query is left to _QUERY
_LIBPQ = re.compile(r"(?P<key>(?<!\S)(?:password|passwd|pwd)[ \t]*=[ \t]*)(?P<value>'[^']*'|[^\s'\";&#]+)", re.I)


def _userinfo(m: re.Match[str]) -> str:
    authority = m["authority"]
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return m[0]
    user = userinfo.split(":", 1)[0]
    return f"{m['scheme']}{user}:{MASK}@{host}"


def redact(text: str) -> str:
    """Return ``text`` with every password hidden as ``***`` (the rules are in the module docstring);
    the rest of each URL (scheme, user, host, port, path, other query keys) is kept."""
    if not text:
        return text
    text = _AUTHORITY.sub(_userinfo, text)
    text = _QUERY.sub(lambda m: m["key"] + MASK, text)
    return _LIBPQ.sub(lambda m: m["key"] + MASK, text)


def is_secret_key(key: object) -> bool:
    """True when a mapping key names a secret (``password``, ``api_key``, ``db_token``…)."""
    return isinstance(key, str) and _SECRET_KEY.fullmatch(key) is not None


def redact_data(data: Any) -> Any:
    """A copy of nested data (dicts, lists, tuples, strings) with secrets hidden: the value of a
    secret key (:func:`is_secret_key`) becomes ``***``, every string goes through :func:`redact`.
    Other values are returned as they are."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: (MASK if is_secret_key(k) and v is not None else redact_data(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_data(v) for v in data]
    if type(data) is tuple:
        return tuple(redact_data(v) for v in data)
    return data
