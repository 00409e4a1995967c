"""User code a spec names with a ``factory:`` key (``module:attribute``): found, imported, checked.

Only ``factory:`` keys import anything; nothing else in a spec ever runs code. Where a module
is looked for, in this order:

1. the spec file's folder,
2. the working directory,
3. installed packages (``sys.path`` as it is);

a bare name without ``:`` (``model: transformer``) is looked up in the entry-point group
(``hpo.models`` for models, ``hpo.data`` for data factories) of installed distributions.

A factory's keyword arguments are checked against its signature before anything runs
(:func:`check_kwargs`): unknown keywords (with the closest names), required ones not given,
values that do not fit the annotation (``int``, ``float``, ``bool``, ``str``,
``Literal[...]``, ``X | None``). This module imports neither torch nor MLflow.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TARGET = re.compile(r"^(?P<module>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$")


class UserCodeError(Exception):
    """A ``factory:`` target that cannot be used; the message says why and what to do."""


def parse_target(text: str) -> tuple[str, str] | None:
    """``"pkg.mod:build"`` -> ``("pkg.mod", "build")``; ``None`` when ``text`` is not of that form."""
    m = _TARGET.match(text.strip()) if isinstance(text, str) else None
    return (m["module"], m["attr"]) if m else None


def search_dirs(spec_path: str | Path | None) -> list[Path]:
    """Folders searched before installed packages: the spec file's folder, then the working directory."""
    dirs = []
    if spec_path is not None:
        dirs.append(Path(spec_path).resolve().parent)
    cwd = Path.cwd().resolve()
    if cwd not in dirs:
        dirs.append(cwd)
    return dirs


@contextmanager
def _on_path(dirs: Iterable[Path]):
    added = [str(d) for d in dirs if str(d) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            try:
                sys.path.remove(d)
            except ValueError:
                pass


@contextmanager
def _no_bytecode():
    """Import without writing ``__pycache__`` beside the user's code: loading a spec writes nothing."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def entry_point(group: str, name: str) -> str | None:
    """``module:attr`` that installed distributions declare for ``name`` in entry-point ``group``."""
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name == name:
            return ep.value.replace(" ", "")
    return None


def load_target(target: str, *, spec_path: str | Path | None = None, group: str | None = None,
                also: Iterable[str | Path] = ()) -> Callable[..., Any]:
    """Import ``target`` (``module:attr``, or an entry-point name of ``group``) and return the callable.

    ``also``: folders searched after the spec's folder and the working directory (a checkpoint
    records where its factory's code was).

    Raises :class:`UserCodeError` when the module does not import (with the import error and
    the folders searched), the attribute is missing or not callable.
    """
    parsed = parse_target(target)
    if parsed is None and group is not None:
        declared = entry_point(group, target)
        if declared is not None:
            parsed = parse_target(declared)
    if parsed is None:
        hint = f", or the name of an installed '{group}' entry point" if group else ""
        raise UserCodeError(f"must be 'module:attribute' (e.g. mynets:build, pkg.sub.mod:build){hint} "
                            f"(got {target!r})")
    module_name, attr = parsed
    dirs = search_dirs(spec_path)
    dirs += [d for d in (Path(x).resolve() for x in also) if d not in dirs]
    _forget_if_moved(module_name.split(".")[0], dirs)
    try:
        with _on_path(dirs), _no_bytecode():
            module = importlib.import_module(module_name)
    except Exception as exc:  # importing runs the user's module: any error is theirs to see
        searched = ", ".join(str(d) for d in dirs)
        raise UserCodeError(f"cannot import module {module_name!r} ({type(exc).__name__}: {exc}); searched "
                            f"{searched}, then the installed packages") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserCodeError(f"module {module_name!r} ({getattr(module, '__file__', '?')}) has no attribute "
                                f"{attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserCodeError(f"{module_name}:{attr} is a {type(obj).__name__}, not a function or class")
    return obj


def _forget_if_moved(top: str, dirs: list[Path]) -> None:
    """Drop an imported module ``top`` (and its submodules) when the folders searched now hold another
    file of that name: two specs in one process (a notebook, a benchmark) with their own ``mynets.py``
    each get their own, instead of the first one imported."""
    import importlib.machinery

    loaded = sys.modules.get(top)
    where = getattr(loaded, "__file__", None)
    if loaded is None or where is None:
        return
    found = importlib.machinery.PathFinder.find_spec(top, [str(d) for d in dirs])
    if found is None or found.origin is None or Path(found.origin).resolve() == Path(where).resolve():
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation that does not resolve is the user's business, not a reason to refuse
        return {}


def annotation(fn: Callable[..., Any], keyword: str) -> Any:
    """The annotation of ``fn``'s ``keyword`` (``inspect.Parameter.empty`` when it has none)."""
    return _hints(fn).get(keyword, inspect.Parameter.empty)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits annotation ``hint`` (only the simple kinds a spec can hold are judged)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # containers, classes, forward references: not judged here


def _show(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Iterable[Any]], *, positional: tuple[str, ...] = ()
                 ) -> list[tuple[str, str]]:
    """Problems ``(keyword, rule)`` of calling ``fn(*positional, **kwargs)``.

    ``kwargs`` maps each keyword to the values it may take (every choice of a searched
    parameter, the bounds of a range, a fixed value alone). ``positional`` names the
    arguments hpo passes itself (e.g. ``input_shape``, ``n_outputs``): they must exist and
    are not the spec's to give.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []  # a builtin without a signature: nothing to check against
    params = list(sig.parameters.values())
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    problems: list[tuple[str, str]] = []
    fixed = list(positional)
    takes_positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(takes_positional) < len(fixed) and not has_var_pos:
        problems.append(("", f"must take {len(fixed)} positional arguments ({', '.join(fixed)}) before its "
                             f"keywords; {fn.__name__} takes {len(takes_positional)}"))
        return problems
    own = {p.name for p in takes_positional[:len(fixed)]}
    hints = _hints(fn)
    for key, values in kwargs.items():
        if key in own:
            problems.append((key, f"is the argument hpo passes itself ({', '.join(fixed)}); use another name"))
            continue
        if key not in named and not var_kw:
            choices = [n for n in named if n not in own]
            close = difflib.get_close_matches(key, choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append((key, f"is not a keyword of {fn.__name__} (its keywords: {', '.join(choices) or 'none'})"
                                  f"{hint}"))
            continue
        hint = hints.get(key, inspect.Parameter.empty)
        bad = [v for v in values if not _fits(v, hint)]
        if bad:
            problems.append((key, f"{bad[0]!r} does not fit the annotation {_show(hint)} of {fn.__name__}'s "
                                  f"keyword {key!r}"))
    for name, p in named.items():
        if name in own or name in kwargs or p.default is not p.empty or p.kind is p.VAR_KEYWORD:
            continue
        problems.append((name, f"{fn.__name__}'s keyword {name!r} has no default: give it a value"))
    return problems


def source_file(fn: Callable[..., Any]) -> Path | None:
    """The file that defines ``fn``, if it has one."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(fn))
    except TypeError:
        return None
    return Path(path).resolve() if path else None


def source_hash(fn: Callable[..., Any]) -> str | None:
    """SHA-256 (first 12 hex digits) of the source file of ``fn`` (``None`` when it has none)."""
    path = source_file(fn)
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def code_folder(fn: Callable[..., Any]) -> Path | None:
    """The local module file or top-level package folder of ``fn``, to ship with a logged model or a
    Ray job; ``None`` when it comes from an installed distribution (site-packages) or has no file."""
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    path = source_file(fn)
    if module is None or path is None:
        return None
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return None
    top = module.__name__.split(".")[0]
    top_module = sys.modules.get(top)
    top_file = getattr(top_module, "__file__", None)
    if top_file is None:
        return None
    top_path = Path(top_file).resolve()
    return top_path.parent if top_path.name == "__init__.py" else top_path
