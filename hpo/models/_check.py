"""Build a spec's model once on the CPU before any trial: a factory that raises, returns something
other than an ``nn.Module`` or has the wrong output shape is a :class:`~hpo.errors.SpecError` (exit 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class BuildCheck:
    """What a trial build of a spec's model gave: its parameter count, output shape and batch size."""

    n_parameters: int
    output_shape: tuple[int, ...]
    batch: int  # 0, or 2 when the model refused a batch of 0
    note: str = ""  # why the batch of 0 was refused, when it was

    def describe(self) -> str:
        """One line for ``hpo validate``."""
        how = f"a batch of {self.batch}" + (f" (a batch of 0 failed: {self.note})" if self.note else "")
        return f"{self.n_parameters:,} trainable parameters; output shape {self.output_shape} on {how}"


def _first(p: Any) -> Any:
    from hpo.spec import Choice, Range

    if isinstance(p, Range):
        return int(p.low) if p.is_int else float(p.low)
    return p.choices[0] if isinstance(p, Choice) else p.value


def first_params(spec: Any) -> dict[str, Any]:
    """A trial's parameters with the first value of every searched parameter (what a trial build uses)."""
    from hpo import space

    return space.resolve(spec, {p.name: _first(p) for p in spec.space})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def check_build(spec: Any, input_shape: tuple[int, ...], n_outputs: int) -> BuildCheck:
    """Build ``spec``'s model for ``input_shape`` / ``n_outputs`` with the first value of every searched
    parameter, on the CPU, and run a batch of 0 (or of 2 when 0 fails) through it in eval mode.

    Returns a :class:`BuildCheck`. Raises :class:`~hpo.errors.SpecError` naming the spec file and the
    model key when the factory raises, does not return an ``nn.Module``, or maps ``(B, *input_shape)``
    to anything but ``(B, n_outputs)``. Torch's global random state is left as it was.
    """
    from hpo.errors import SpecError
    from hpo.models import NotAModuleError, build_model, count_parameters

    key = "model.factory" if isinstance(spec.raw.get("model"), dict) else "model"
    params = first_params(spec)
    shape = tuple(int(s) for s in input_shape)
    with torch.random.fork_rng(devices=[]):  # a trial build must not shift the seeds of the trials after it
        try:
            net = build_model(spec.model, input_shape=shape, n_outputs=n_outputs, params=params, spec_path=spec.path)
        except NotAModuleError as exc:
            raise SpecError([(key, f"must return a torch.nn.Module; {exc}")], spec.path) from None
        except Exception as exc:  # the user's code: any error is theirs to see, as a message
            raise SpecError([(key, f"the factory raised {_one_line(exc)} when called as {spec.model}"
                                   f"(input_shape={shape}, n_outputs={n_outputs}, ...)")], spec.path) from None
        net = net.eval()
        note, out = "", None
        for batch in (0, 2):
            try:
                with torch.no_grad():
                    out = net(torch.zeros((batch, *shape)))
                break
            except Exception as exc:
                if batch == 2:
                    raise SpecError([(key, f"the model it built fails on a batch of shape {(2, *shape)}: "
                                           f"{_one_line(exc)}")], spec.path) from None
                note = _one_line(exc)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if got != (batch, n_outputs):
        what = f"shape {got}" if got is not None else f"a {type(out).__name__}"
        raise SpecError([(key, f"the model must map (B, *input_shape) to (B, n_outputs) = ({batch}, {n_outputs}) "
                               f"for this data, but a batch of shape {(batch, *shape)} gave {what}")], spec.path)
    return BuildCheck(count_parameters(net), got, batch, note)
