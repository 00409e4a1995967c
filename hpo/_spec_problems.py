"""pydantic's validation errors in hpo's words: ``(key path, rule)`` with the valid keys, the
options of a literal and the closest match. Part of :mod:`hpo.spec`.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from hpo._spec_space import closest

MAX_SEED = 2**32 - 1  # numpy's and the fold splitter's seeds are 32-bit


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = root
    for part in loc:
        fld = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(fld, "annotation", None)
        # a section that may be left out (``StopSpec | None``) is the section itself
        kinds = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not kinds:
            return None
        model = kinds[0]
    return model


def pydantic_problems(exc: ValidationError, root: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(key path, rule)`` of each error pydantic found validating ``root`` (at ``prefix``), in hpo's words."""
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        kind = err["type"]
        value = err.get("input")
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[:-1])
            valid = list(parent.model_fields) if parent else []
            rule = f"unknown key; valid keys here: {', '.join(valid)}{closest(loc[-1], valid)}"
        elif kind == "missing":
            rule = "required key is missing"
        elif kind == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            options = re.findall(r"'([^']*)'", expected)
            rule = f"must be one of {', '.join(options)} (got {value!r}){closest(value, options)}"
        elif kind == "string_pattern_mismatch" and path == "name":
            rule = f"must be 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit (got {value!r})"
        elif kind in ("model_type", "dict_type"):
            rule = f"must be a mapping of keys (got {type(value).__name__} {value!r})"
        elif path == "search.seed" and kind in ("greater_than_equal", "less_than_equal"):
            rule = f"must be an integer from 0 to {MAX_SEED} (seeds are 32-bit) (got {value!r})"
        else:
            msg = err["msg"]
            msg = msg[0].lower() + msg[1:] if msg else msg
            msg = msg.replace("input should be", "must be").replace("Input should be", "must be")
            rule = f"{msg} (got {value!r})"
        problems.append((path, rule))
    return problems
