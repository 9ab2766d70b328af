"""Speed figures: `cnnbench bench MODEL...` and `cnnbench bench deformconv`.

* :mod:`~cnnbench.bench.timing`: timing (median and IQR), peak memory, thread choice;
* :mod:`~cnnbench.bench.models`: inference and training-step speed of models per batch size;
* :mod:`~cnnbench.bench.exported`: a file ``cnnbench export`` wrote, beside PyTorch;
* :mod:`~cnnbench.bench.ops`: operator benchmarks (``OP_BENCHES``: ``deformconv``);
* :mod:`~cnnbench.bench.output`: CSV, JSON files and sweep plots (paths checked before any work).
"""

from cnnbench.bench.exported import bench_exported, is_exported_file
from cnnbench.bench.models import (
    bench_model, bench_models, expand_models, generic_loss, is_wildcard, make_optimizer,
    training_optimizer)
from cnnbench.bench.ops import DEFORM_SHAPE, OP_BENCHES, bench_deformconv, deform_impls, parse_shape
from cnnbench.bench.output import plot_sweep, write_csv, write_json
from cnnbench.bench.timing import (
    choose_threads, parse_int_list, parse_precision, time_call, time_phases)

__all__ = ["DEFORM_SHAPE", "OP_BENCHES", "bench_deformconv", "bench_exported", "bench_model",
           "bench_models", "is_exported_file",
           "choose_threads", "deform_impls", "expand_models", "generic_loss",
           "is_wildcard", "make_optimizer", "parse_int_list", "parse_precision", "parse_shape",
           "plot_sweep", "time_call", "time_phases", "training_optimizer", "write_csv",
           "write_json"]
