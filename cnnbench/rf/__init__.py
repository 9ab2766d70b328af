"""Receptive fields: exact per-layer fields on the real data-flow graph, checked by gradients.

* :mod:`~cnnbench.rf.field`: the field algebra (per axis and unit, the input pixels it reads);
* :mod:`~cnnbench.rf.rules`: one rule per family of tensor operations, with its linearisation;
* :mod:`~cnnbench.rf.trace`: the tracer, which runs the model once and dispatches every
  operation to its rule;
* :mod:`~cnnbench.rf.analysis`: per-layer tables and the grid view of detection maps;
* :mod:`~cnnbench.rf.verify`: the check against the input gradient of a linearised model;
* :mod:`~cnnbench.rf.erf`: the effective receptive field (Luo et al., NeurIPS 2016).

Where paths meet the intervals are joined, so the largest field wins; differing strides or
centres are reported as misaligned paths. An operation without a rule is flagged, never taken
for the identity. Drawing is in :mod:`cnnbench.render` (console) and :mod:`cnnbench.plots` (PNG).
"""

from cnnbench.rf.analysis import grid_view, module_fields, receptive_fields
from cnnbench.rf.erf import effective_field, load_checkpoint
from cnnbench.rf.verify import verify, verify_module

__all__ = ["effective_field", "grid_view", "load_checkpoint", "module_fields", "receptive_fields",
           "verify", "verify_module"]
