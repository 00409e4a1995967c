"""Model zoo and the one way a model is built: ``factory(input_shape, n_outputs, **keywords)``.

The built-ins (an MLP, a plain CNN and a CIFAR ResNet) are factories like a user's: ``hpo.models.mlp:build``
and so on, declared as ``hpo.models`` entry points. Every model is an :class:`torch.nn.Module` that maps
a batch ``(B, *input_shape)`` to ``(B, n_outputs)`` logits/predictions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from hpo.models import cnn, mlp, resnet
from hpo.models._check import BuildCheck, check_build
from hpo.models._layers import ACTIVATIONS
from hpo.models.cnn import CNN
from hpo.models.init import apply_init
from hpo.models.mlp import MLP
from hpo.models.resnet import RESNET_DEPTHS, ResNet

__all__ = [
    "ACTIVATIONS",
    "BUILTIN_FACTORIES",
    "BuildCheck",
    "CNN",
    "MLP",
    "MODELS",
    "NotAModuleError",
    "RESNET_DEPTHS",
    "ResNet",
    "build_model",
    "check_build",
    "count_parameters",
    "factory_kwargs",
    "model_factory",
]

#: Names of the built-in models; any other name given to :func:`build_model` is a model factory.
MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet")

#: The built-ins' factories (also declared as ``hpo.models`` entry points in pyproject.toml).
BUILTIN_FACTORIES: dict[str, Callable[..., nn.Module]] = {"mlp": mlp.build, "cnn": cnn.build, "resnet": resnet.build}



class NotAModuleError(TypeError):
    """A model factory returned something other than a ``torch.nn.Module``."""


_REQUIRED_PARAMS = ("depth", "width", "activation", "dropout", "batch_norm")
_FACTORY_PREFIX = "model."  # a factory's keywords among a trial's params (hpo._spec_space.MODEL_PREFIX)
_loaded: dict[tuple[Any, ...], Callable[..., Any]] = {}


def _keywords(fn: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]


def model_factory(name: str, *, spec_path: str | Path | None = None, code_dirs: Sequence[str] = ()
                  ) -> Callable[..., nn.Module]:
    """The factory of model ``name``: a built-in's, or the user's factory (``module:attr`` or an
    ``hpo.models`` entry point) imported by :func:`hpo.usercode.load_target` (spec folder, working
    directory, ``code_dirs``, installed packages). Raises ``ValueError`` for an unknown bare name and
    :class:`~hpo.usercode.UserCodeError` for a factory that cannot be imported."""
    if name in BUILTIN_FACTORIES:
        return BUILTIN_FACTORIES[name]
    key = (name, str(spec_path), tuple(code_dirs))
    if key not in _loaded:  # a worker builds one model per fold: import once (Python caches the module anyway)
        from hpo.usercode import entry_point, load_target, parse_target

        if parse_target(name) is None and entry_point("hpo.models", name) is None:
            raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(MODELS)}, a 'module:attribute' "
                             "factory or an installed 'hpo.models' entry point")
        _loaded[key] = load_target(name, spec_path=spec_path, group="hpo.models", also=code_dirs)
    return _loaded[key]


def factory_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """A user factory's keyword arguments: the ``model.<keyword>`` entries of ``params``, prefix stripped."""
    n = len(_FACTORY_PREFIX)
    return {k[n:]: v for k, v in params.items() if k.startswith(_FACTORY_PREFIX)}


def build_model(
    name: str,
    *,
    input_shape: tuple[int, ...],
    n_outputs: int,
    params: Mapping[str, Any],
    spec_path: str | Path | None = None,
    code_dirs: Sequence[str] = (),
) -> nn.Module:
    """Build model ``name`` for examples of shape ``input_shape`` with ``n_outputs`` outputs.

    Every model is built as ``factory(input_shape, n_outputs, **keywords)``.

    Args:
        name: one of :data:`MODELS`, or a model factory (``module:attr`` or an entry-point name).
        input_shape: shape of one example without the batch dim: ``(F,)`` or ``(C, H, W)``.
        n_outputs: number of outputs (classes, or regression targets).
        params: a trial's parameters. A built-in takes ``depth``, ``width``, ``activation``,
            ``dropout``, ``batch_norm`` (for ``resnet``, ``depth`` is the total depth, one of
            :data:`RESNET_DEPTHS`, and ``batch_norm`` is ignored: always on) and ``init``
            (:func:`~hpo.models.init.apply_init`); a factory takes the ``model.<keyword>``
            entries. Other keys are ignored.
        spec_path, code_dirs: where a factory's module is looked for (see :func:`model_factory`).

    Raises:
        ValueError: unknown model or activation, missing parameter, bad ResNet depth, an image
            model given a tabular shape, or an out-of-range value.
        NotAModuleError: a factory that returns something other than an ``nn.Module``.
        hpo.usercode.UserCodeError: a factory that cannot be imported.
    """
    fn = model_factory(name, spec_path=spec_path, code_dirs=code_dirs)
    shape = tuple(int(s) for s in input_shape)
    if name in BUILTIN_FACTORIES:
        missing = [k for k in _REQUIRED_PARAMS if k not in params]
        if missing:
            raise ValueError(f"model {name!r} is missing hyperparameter(s): {', '.join(missing)}")
        if params["activation"] not in ACTIVATIONS:
            raise ValueError(f"unknown activation {params['activation']!r}; expected one of: {', '.join(ACTIVATIONS)}")
        kwargs = {k: params[k] for k in _keywords(fn)}
    else:
        kwargs = factory_kwargs(params)
    net = fn(shape, n_outputs, **kwargs)
    if not isinstance(net, nn.Module):
        raise NotAModuleError(f"model factory {name} returned a {type(net).__name__}, not a torch.nn.Module")
    if name in BUILTIN_FACTORIES:
        apply_init(net, params.get("init", "default"), params["activation"])
    return net


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
