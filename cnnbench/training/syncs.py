"""Find host synchronisations in a training step, on any device (the CPU included).

On CUDA a step that reads a value the device computes (``loss.item()``, ``float(x)``, ``if
(x > 0).any():``) or runs an operator whose output size depends on the data (boolean-mask
indexing, ``nonzero``, ``unique``, ``bincount``, NMS) makes the host wait for the device: the
queue of kernels drains and the GPU idles. ``torch.cuda.set_sync_debug_mode`` only sees this on a
GPU. :class:`HostSyncs` sees it anywhere, by watching the operators that ATen dispatches: it lists
every call of an operator that would synchronise on CUDA, so a CPU test can hold each task's step
to "no host synchronisation". ``benchmarks/`` and the tests use it::

    with HostSyncs() as syncs:
        trainer.train_step(images, targets)
    assert not syncs.found, syncs.found
"""

from __future__ import annotations

import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Operators whose CUDA kernels read a value back to the host (an output size, a maximum, a bool).
SYNCING = {
    aten._local_scalar_dense.default: "reads a value on the host (.item(), float(), bool(), int())",
    aten.nonzero.default: "nonzero: the output size depends on the data",
    aten.masked_select.default: "masked_select: the output size depends on the data",
    aten.bincount.default: "bincount: reads the largest value on CUDA",
    aten._unique2.default: "unique: the output size depends on the data",
    aten.unique_dim.default: "unique: the output size depends on the data",
    aten.unique_consecutive.default: "unique_consecutive: the output size depends on the data",
    aten.repeat_interleave.Tensor: "repeat_interleave without output_size",
    aten.equal.default: "torch.equal reads a bool on the host",
    aten.is_nonzero.default: "reads a bool on the host",
}
# torch.optim keeps a step count on the host (unless ``capturable``) and reads it with .item():
# no device is read, so calls from there are not counted.
HOST_SIDE = (os.path.dirname(torch.optim.__file__) + os.sep,)
BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                aten._index_put_impl_.default}


def _syncs(func, args, kwargs) -> str | None:
    if func in SYNCING:
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is not None:
            return None
        return SYNCING[func]
    if func in BOOL_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in indices):
            return "indexing by a boolean mask: the output size depends on the data"
    if getattr(func, "namespace", "") == "torchvision" and "nms" in func.name():
        return "NMS: the number of boxes kept depends on the data"
    return None


class HostSyncs(TorchDispatchMode):
    """Records ``(operator, why)`` for each call that would make the host wait on CUDA."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _syncs(func, args, kwargs)
        if why and not any(frame.filename.startswith(HOST_SIDE)
                           for frame in traceback.extract_stack()):
            self.found.append((str(func), why))
        return func(*args, **kwargs)
