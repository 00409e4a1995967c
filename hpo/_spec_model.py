"""The ``model:`` key of a spec: a built-in network by name, or a model factory (user code).

``model: mlp`` (or ``cnn``, ``resnet``) names a built-in; ``model: NAME`` an installed ``hpo.models``
entry point; ``model: {factory: "module:attr", params: {...}}`` a factory found by
:func:`hpo.usercode.load_target`. A factory's ``params:`` join the search space as parameters named
``model.<keyword>`` (same grammar as ``params:``). Part of :mod:`hpo.spec`; importing user code
happens only here, only for a spec that names a factory, and only when the spec is loaded.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hpo._spec_space import MODEL_PREFIX, Choice, Fixed, Param, Range, closest, key_path
from hpo.params import MODELS

MODEL_KEYS = ("factory", "params")
GROUP = "hpo.models"  # the entry-point group of installed model factories
POSITIONAL = ("input_shape", "n_outputs")  # what hpo passes every factory itself


def _entry_points() -> list[str]:
    import importlib.metadata

    return sorted({ep.name for ep in importlib.metadata.entry_points(group=GROUP)} - set(MODELS))


def parse_model(raw: Any, problems: list) -> tuple[str, dict[str, Any], str]:
    """``(model, factory params, key of the factory)`` of the ``model:`` value.

    ``model`` is the built-in name or the factory target as written; the factory's params come back
    named ``model.<keyword>``, with each ``when`` naming a sibling keyword rewritten to ``model.<name>``;
    the key is where a factory problem is reported (``model`` or ``model.factory``; ``""`` for a built-in).
    """
    if isinstance(raw, str):
        if raw in MODELS:
            return raw, {}, ""
        from hpo.usercode import entry_point, parse_target

        if parse_target(raw) is not None:
            problems.append(("model", f"a 'module:attribute' target goes under model.factory: write "
                             f"model: {{factory: {raw}}} (only factory: keys import code)"))
            return raw, {}, "model"
        if entry_point(GROUP, raw) is not None:
            return raw, {}, "model"
        names = _entry_points()
        installed = f"installed: {', '.join(names)}" if names else "none is installed"
        problems.append(("model", f"must be one of {', '.join(MODELS)} (got {raw!r}){closest(raw, [*MODELS, *names])}, "
                         f"the name of an installed '{GROUP}' entry point ({installed}), or a mapping "
                         "{factory: 'module:attribute', params: {...}}"))
        return "mlp", {}, ""  # go on checking the rest as for a built-in
    if not isinstance(raw, dict):
        problems.append(("model", f"must be a built-in name ({', '.join(MODELS)}), an entry-point name, or a "
                         f"mapping {{factory: 'module:attribute', params: {{...}}}} (got {type(raw).__name__} {raw!r})"))
        return "mlp", {}, ""
    for key in raw:
        if key not in MODEL_KEYS:
            problems.append((f"model.{key}", f"unknown key; valid keys here: {', '.join(MODEL_KEYS)}"
                             f"{closest(str(key), MODEL_KEYS)}"))
    factory = raw.get("factory")
    if factory is None:
        problems.append(("model.factory", "required key is missing: the factory as 'module:attribute' "
                         "(e.g. mynets:build) or an installed 'hpo.models' entry-point name"))
        factory = ""
    elif not isinstance(factory, str) or not factory.strip():
        problems.append(("model.factory", f"must be 'module:attribute' or an entry-point name (got {factory!r})"))
        factory = str(factory)
    params = raw.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        problems.append(("model.params", f"must be a mapping of the factory's keywords (got {type(params).__name__} "
                         f"{params!r})"))
        params = {}
    bad = [k for k in params if not isinstance(k, str) or not k.isidentifier()]
    for k in bad:
        problems.append((f"model.params.{k}", "must be a Python keyword name (letters, digits, '_')"))
    own = {f"{MODEL_PREFIX}{k}": _sibling_when(v, params) for k, v in params.items() if k not in bad}
    return factory, own, "model.factory"


def _sibling_when(value: Any, siblings: dict[str, Any]) -> Any:
    """``value`` with its ``when`` keys naming a sibling keyword rewritten to ``model.<name>``."""
    if not isinstance(value, dict) or not isinstance(value.get("when"), dict):
        return value
    when = {(f"{MODEL_PREFIX}{k}" if k in siblings else k): v for k, v in value["when"].items()}
    return {**value, "when": when}


def _values(p: Param) -> list[Any]:
    """The values a parameter may take, as the factory will see them (a range by its two bounds)."""
    if isinstance(p, Fixed):
        return [p.value]
    if isinstance(p, Choice):
        return list(p.choices)
    return [int(p.low), int(p.high)] if p.is_int else [float(p.low), float(p.high)]


def check_factory(target: str, key: str, space: list[Param], spec_path: str | None, problems: list) -> list[Param]:
    """Import the factory ``target`` and check the space's ``model.*`` parameters against its signature.

    Problems go to ``problems`` (``model.factory: ...``, ``model.params.KEY: ...``). Returns the space
    with an integer-bounded range of a ``float``-annotated keyword made a float range.
    """
    from hpo.usercode import UserCodeError, annotation, check_kwargs, load_target

    try:
        fn = load_target(target, spec_path=spec_path, group=GROUP)
    except UserCodeError as exc:
        problems.append((key, str(exc)))
        return space
    own = [p for p in space if p.name.startswith(MODEL_PREFIX)]
    kwargs = {p.name[len(MODEL_PREFIX):]: _values(p) for p in own}
    for keyword, rule in check_kwargs(fn, kwargs, positional=POSITIONAL):
        problems.append((key_path(MODEL_PREFIX + keyword) if keyword else key, rule))
    out = []
    for p in space:
        if isinstance(p, Range) and p.is_int and p.name.startswith(MODEL_PREFIX) and \
                _wants_float(annotation(fn, p.name[len(MODEL_PREFIX):])):
            p = replace(p, is_int=False, low=float(p.low), high=float(p.high))
        out.append(p)
    return out


def _wants_float(hint: Any) -> bool:
    """Whether annotation ``hint`` is ``float`` (or ``float | None``) and not also ``int``."""
    import types
    import typing

    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return float in args and int not in args

