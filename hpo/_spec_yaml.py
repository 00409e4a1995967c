"""Reading a spec file: regular files only, at most ``MAX_SPEC_BYTES + 1`` bytes, through a YAML
loader without aliases, anchors, merge keys or collection keys. Part of :mod:`hpo.spec`."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import SpecError

MAX_SPEC_BYTES = 1 << 20  # a study spec is a few hundred bytes; refuse anything absurd


class SpecLoader(yaml.SafeLoader):
    """Safe loader that refuses anchors/aliases (a tiny file could expand to gigabytes), merge keys
    (they need anchors to be of use) and lists or mappings as keys (unhashable), and reads keys such as
    ``on`` as the names they are (YAML 1.1 makes them booleans)."""

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a spec; write the value out",
                event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"YAML anchors (&{event.anchor}) are not allowed in a spec; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None, None, "YAML merge keys (<<) are not allowed in a spec; write the merged keys out",
                    key_node.start_mark)
            if isinstance(key_node, yaml.SequenceNode | yaml.MappingNode):
                kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be a plain name, not a {kind}; write e.g. 'lr:' (a '?' or a "
                    "'[...]'/'{...}' before ':' makes the key itself a collection)", key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:bool":  # YAML 1.1 reads the key `on:` (yes, no, off) as a boolean
                key_node.tag = "tag:yaml.org,2002:str"
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}: each key may appear once per mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-4 and 1.0e4 as strings, so `lr: 1e-4` would fail as "not a number".
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a FIFO (named pipe)", "a folder", ...; "a regular file")."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "a regular file")


def read_limited(path: Path) -> bytes:
    """At most ``MAX_SPEC_BYTES + 1`` bytes of a regular file: ``st_size`` is 0 for a device and a FIFO
    blocks until someone writes, so both are refused rather than read."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise SpecError([("", f"cannot read spec: {path} is {file_kind(mode)}, not a regular file; "
                                  "give the path of a YAML file")], str(path))
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, opening it must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise SpecError([("", f"cannot read spec: {path} is {file_kind(mode)}, not a regular file")],
                                str(path))
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise SpecError([("", f"cannot read spec: {exc.strerror or exc}")], str(path)) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([("", f"spec is over {MAX_SPEC_BYTES} bytes; a spec must be under {MAX_SPEC_BYTES} bytes")],
                        str(path))
    return data
