"""The tracer: run a model once, attaching a :class:`Field` to every tensor that depends on the
input.

A ``TorchFunctionMode`` sees every tensor operation (``F.conv2d``, ``torch.cat``, ``+``,
``F.interpolate``, ``F.pad``, ``flatten`` ...), so branches, additions, concatenations, up-sampling
with skips and multi-output heads are followed as they really run, whatever module or plain
function performs them; each operation is looked up in :data:`cnnbench.rf.rules.RULES`. Forward
hooks give each result its module name and collect the rules' notes per module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnbench.capture import hook_modules, tensors, type_name
from cnnbench.rf.field import Field
from cnnbench.rf.rules import RULES, Call, Unknown, op_name


@dataclass
class Row:
    """One module call's output: its field and the notes of the operations inside it."""

    name: str
    type: str
    field: Field
    notes: list = field(default_factory=list)
    call: tuple = ()  # (module, call number, output index) to find the tensor again


class Tracer(TorchFunctionMode):
    """Attach a :class:`Field` to every tensor that depends on the input; one :class:`Row` per
    module output that carries one."""

    ATTR = "_cnnbench_field"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules() if n}
        self.frames: list[list[str]] = [[]]  # notes per open module call; [0]: outside any
        self.rows: list[Row] = []
        self.calls: dict[nn.Module, int] = {}
        self.grid_sources: list[Field] = []  # maps whose layout a reshape consumed (head maps)

    def field_of(self, t) -> Field | None:
        return getattr(t, self.ATTR, None) if isinstance(t, torch.Tensor) else None

    def put(self, out, fld: Field | None) -> None:
        if fld is None:
            return
        for t in tensors(out):
            try:
                setattr(t, self.ATTR, fld)
            except (AttributeError, RuntimeError):
                pass

    def note(self, text: str) -> None:
        if text not in self.frames[-1]:
            self.frames[-1].append(text)

    def hook(self) -> list:
        """Register the module hooks; returns their handles."""
        return hook_modules(self.names, self._enter, self._leave)

    def _enter(self, module, args):
        self.frames.append([])

    def _leave(self, module, args, output):
        if isinstance(module, torch.jit.ScriptModule):  # its operations ran unseen
            self._opaque(module, args, output)
        notes = self.frames.pop()
        name = self.names[module]
        count = self.calls[module] = self.calls.get(module, 0) + 1
        label = name if count == 1 else f"{name}#{count}"
        outs = [(i, t) for i, t in enumerate(tensors(output)) if self.field_of(t) is not None]
        for i, t in outs:
            row_name = label if len(outs) == 1 else f"{label}[{i}]"
            self.rows.append(Row(row_name, type_name(module), self.field_of(t), list(notes),
                                 (module, count, i)))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [(t, self.field_of(t)) for t in tensors((args, kwargs))
                  if self.field_of(t) is not None]
        if not inputs or not tensors(out):
            return out
        name = op_name(func)
        try:
            if name not in RULES:
                raise Unknown("no rule")
            result = RULES[name].field(Call(name, args, kwargs, out, inputs, self))
        except Unknown as exc:
            result = self.unknown(f"{name} ({exc})", out, inputs)
        except Exception as exc:  # a rule that cannot read this call must not hide it
            result = self.unknown(f"{name} ({type(exc).__name__})", out, inputs)
        if isinstance(result, list):
            for t, fld in zip(tensors(out), result):
                self.put(t, fld)
        else:
            self.put(out, result)
        return out

    def _opaque(self, module, args, output) -> None:
        """The outputs of a module whose operations the mode did not see (TorchScript): the
        field of its input, flagged unknown."""
        inputs = [(t, self.field_of(t)) for t in tensors(args) if self.field_of(t) is not None]
        if inputs and all(self.field_of(t) is None for t in tensors(output)):
            self.put(output, self.unknown(f"{self.names[module]} (TorchScript)", output, inputs))

    def unknown(self, what: str, out, inputs) -> Field:
        """Keep the input's layout, flagged: the field is unknown from here on."""
        self.note(f"uninterpreted op {what}: field unknown")
        flag = f"depends on uninterpreted op {what.split(' ')[0]}"
        spatial = [f for _, f in inputs if f.dims is not None]
        base = spatial[0] if spatial else inputs[0][1]
        shape = tensors(out)[0].shape
        dims = base.dims if base.dims and max(base.dims) < len(shape) else None
        return base.with_axes(base.axes, dims, {flag}).moved(dims)
