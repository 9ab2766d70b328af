"""`cnnbench export RUN`: a run's checkpoint as one TorchScript or ONNX file, checked.

The file holds the whole path from pixels to the task's output, as timm's and torchvision's
exports do, so that nothing of cnnbench is needed to use it:

* **input** ``images``: ``[N, C, H, W]`` at the run's input size (``C`` and ``H x W`` of
  ``config.yaml``'s ``input_size``), ``uint8`` pixels 0-255 (``--input-dtype uint8``, the
  default) or ``float32`` in [0, 1] (``--input-dtype float32``); any batch size ``N``. The file
  does not resize: give it images already at ``H x W`` (``cnnbench predict`` reads files so).
* **normalisation folded in**: the scaling to [0, 1], the repetition of a grey channel for a
  colour model and the run's per-channel mean and std (the checkpoint's ``Context``) are the
  first operations of the graph, exactly as the task's ``prepare`` does them at test time.
* **output** per task (``OUTPUTS``): classification ``logits [N, K]``; multi-label ``logits
  [N, K]`` (a sigmoid each); single-object ``box [N, 4]`` (x0, y0, x1, y1 in fractions of the
  image, the sigmoid applied) and ``class_logits [N, K]``; segmentation ``logits [N, K+1, H,
  W]`` (class 0 is the background); detection ``boxes [N, A, 4]`` decoded from the anchors
  (fractions, clipped to the image) and ``scores [N, A, K]`` (per-class probabilities) for
  every anchor: the score threshold and per-class non-maximum suppression are *not* in the
  file (apply ``torchvision.ops.batched_nms`` with the run's ``nms_iou``).
* **metadata**: class names, the input, the outputs, the normalisation, the run and checkpoint,
  as JSON under the key ``cnnbench`` (ONNX ``metadata_props``; TorchScript's extra file
  ``cnnbench.json``), with ``class_names`` also on its own.

After writing, the file is loaded back (``torch.jit.load``, ``onnxruntime``'s CPU provider) and
run on the run's own test images, as one batch and as a batch of one; the largest absolute
difference from the eager model (the task's ``prepare`` and the PyTorch model) is reported.

The deformable convolution (``resnet18-dcn``) is refused: its CPU kernel is a custom autograd
function that neither ``torch.jit.trace`` nor the ONNX exporter can express.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnbench import __version__, inference
from cnnbench.errors import CnnbenchError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}  # format: the suffix its file takes
INPUT_DTYPES = ("uint8", "float32")
CHECK_IMAGES = 64  # test images the export is checked on (one batch, then the first alone)
METADATA_KEY = "cnnbench"  # ONNX metadata_props key; TorchScript extra file cnnbench.json
OPSET = 18


# -- what inference needs from a run (one place: the shared inference loader replaces it) --

@dataclass
class RunModel:
    """A run's checkpoint ready for inference on the CPU."""

    run: Path
    checkpoint: str
    epoch: int
    config: dict
    task: object  # the task (``cnnbench.tasks.base.Task``) built from the checkpoint's context
    model: nn.Module  # eval mode, CPU

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.task.context.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the model is fed (before the task's channel repeat)."""
        c, h, w = self.config["input_size"]
        return int(c), int(h), int(w)


def _load_run(run: str | Path, checkpoint: str = "best") -> RunModel:
    """The model, its weights, class names and normalisation of a run's checkpoint (the one
    inference loader, on the CPU)."""
    loaded = inference.load(run, checkpoint, overrides={"device": "cpu"})
    return RunModel(loaded.run or loaded.source.parent, checkpoint, loaded.epoch, loaded.config,
                    loaded.task, loaded.model)


# -- the exported module: pixels in, the task's output out --

def _normalisation(loaded: RunModel) -> tuple[list[float], list[float]] | None:
    """Per-channel (mean, std) the task's ``prepare`` applies, or None when it applies none."""
    config, context = loaded.config, loaded.task.context
    if config["task"] == "classification" and not config["normalize"]:
        return None
    mean, std = list(context.mean), list(context.std)
    if len(mean) != context.channels:  # grey statistics, repeated for a colour model
        mean, std = mean[:1] * context.channels, std[:1] * context.channels
    return mean, std


def _detection_head(task):
    from cnnbench import boxes as B

    def head(output):
        anchors, cls_logits, box_offsets = output
        boxes = B.decode(anchors, box_offsets.float()).clamp(0, 1)
        return boxes, B.scores_from_logits(cls_logits.float(), task.context.num_classes)
    return head


def _single_object_head(task):
    def head(output):
        return output[:, :4].float().sigmoid(), output[:, 4:]
    return head


def _identity_head(task):
    return lambda output: output


# task: (output names, what they are, the head that makes them from the model's output)
OUTPUTS = {
    "classification": (("logits",), "logits [N, K] (softmax for probabilities)", _identity_head),
    "multi-label": (("logits",), "logits [N, K] (a sigmoid per class)", _identity_head),
    "single-object": (("box", "class_logits"),
                      "box [N, 4] (x0, y0, x1, y1, fractions of the image) and class_logits "
                      "[N, K]", _single_object_head),
    "segmentation": (("logits",), "logits [N, K+1, H, W], class 0 the background",
                     _identity_head),
    "detection": (("boxes", "scores"),
                  "boxes [N, A, 4] decoded from every anchor (x0, y0, x1, y1, fractions, "
                  "clipped) and scores [N, A, K] (class probabilities); no score threshold, no "
                  "NMS: apply torchvision.ops.batched_nms yourself", _detection_head),
}


class Exported(nn.Module):
    """The run's model with the task's test-time input preparation before it and the task's
    decoding after it; ``forward(images)`` takes uint8 (or [0, 1] float) pixels."""

    def __init__(self, loaded: RunModel, input_dtype: str = "uint8"):
        super().__init__()
        self.model = loaded.model
        self.uint8 = input_dtype == "uint8"
        self.channels = loaded.task.context.channels
        self.repeat = self.channels != loaded.input_shape[0]
        stats = _normalisation(loaded)
        self.normalise = stats is not None
        mean, std = stats or ([0.0] * self.channels, [1.0] * self.channels)
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)
        self.head = OUTPUTS[loaded.config["task"]][2](loaded.task)

    def forward(self, images: torch.Tensor):
        x = images.float() / 255.0 if self.uint8 else images
        if self.repeat:
            x = x.expand(-1, self.channels, -1, -1)
        if self.normalise:
            x = (x - self.mean) / self.std  # as cnnbench.data.transforms.normalize
        return self.head(self.model(x))


# -- writing --

def default_out(run: Path, checkpoint: str, fmt: str) -> Path:
    """``RUN/export/best.onnx``, ``RUN/export/last.torchscript.pt``."""
    suffix = ".torchscript.pt" if fmt == "torchscript" else FORMATS[fmt]
    return run / "export" / f"{checkpoint}{suffix}"


def need_onnx() -> None:
    """ONNX files need the ``export`` extra: one line saying so when it is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise CnnbenchError(f"ONNX needs {', '.join(missing)}: pip install 'cnnbench[export]' "
                            "(or use --format torchscript)")


def _check_request(fmt: str, input_dtype: str, out: str | Path | None) -> None:
    if fmt not in FORMATS:
        raise CnnbenchError(f"--format must be {' or '.join(FORMATS)}, not {fmt!r}")
    if fmt == "onnx":
        need_onnx()
    if input_dtype not in INPUT_DTYPES:
        raise CnnbenchError(f"--input-dtype must be {' or '.join(INPUT_DTYPES)}, "
                            f"not {input_dtype!r}")
    if out is not None:
        out = Path(out)
        if out.suffix != FORMATS[fmt]:
            raise CnnbenchError(f"--out {out}: a {fmt} file ends in {FORMATS[fmt]}")
        if out.is_dir():
            raise CnnbenchError(f"--out {out} is a folder: name the file")


def _refusal(loaded: RunModel) -> str | None:
    from cnnbench.ops.deform import DeformConv2d

    if any(isinstance(m, DeformConv2d) for m in loaded.model.modules()):
        return (f"{loaded.config['model']} has deformable convolutions, which cannot be "
                "exported: their kernel is a custom autograd function that neither "
                "torch.jit.trace nor the ONNX exporter can express")
    if loaded.config["task"] not in OUTPUTS:
        return f"export knows {', '.join(OUTPUTS)} runs, not {loaded.config['task']}"
    return None


def metadata(loaded: RunModel, fmt: str, input_dtype: str) -> dict:
    c, h, w = loaded.input_shape
    names, outputs, _ = OUTPUTS[loaded.config["task"]]
    stats = _normalisation(loaded)
    scale = "0-255" if input_dtype == "uint8" else "0-1"
    colour = "grey" if c == 1 else "RGB" if c == 3 else f"{c} channels"
    return {
        "format": fmt, "cnnbench_version": __version__,
        "model": loaded.config["model"], "task": loaded.config["task"],
        "class_names": list(loaded.class_names),
        "input": {"name": "images", "dtype": input_dtype, "shape": ["N", c, h, w],
                  "range": scale, "channels": colour,
                  "text": f"images {input_dtype} [N, {c}, {h}, {w}] ({colour}, {scale}; "
                          f"resize to {h}x{w} first); normalisation inside"},
        "normalisation": None if stats is None else {"mean": stats[0], "std": stats[1],
                                                     "scale": "pixel / 255"},
        "outputs": {"names": list(names), "text": outputs},
        "run": str(loaded.run.resolve()), "checkpoint": loaded.checkpoint,
        "epoch": loaded.epoch,
    }


def _write_torchscript(module: Exported, example: torch.Tensor, meta: dict, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json":
                                                         json.dumps(meta)})


def _write_onnx(module: Exported, example: torch.Tensor, meta: dict, path: Path) -> None:
    import onnx

    names = meta["outputs"]["names"]
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["images"], output_names=names,
                                    dynamic_shapes=({0: batch},), verbose=False)
    proto = program.model_proto
    for key, value in ((METADATA_KEY, json.dumps(meta)),
                       ("class_names", json.dumps(meta["class_names"])),
                       ("input", meta["input"]["text"]), ("outputs", meta["outputs"]["text"])):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(path), save_as_external_data=False)


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript}


# -- reading an exported file back (also for `cnnbench bench FILE`) --

@dataclass
class ExportedFile:
    """An exported file loaded for inference: ``run(images) -> list of numpy arrays``."""

    path: Path
    format: str
    meta: dict
    run: object  # callable: a numpy or torch batch -> list of numpy arrays

    def __call__(self, images):
        return self.run(images)


def open_exported(path: str | Path, threads: int | None = None) -> ExportedFile:
    """A file ``cnnbench export`` wrote, loaded with onnxruntime (CPU) or ``torch.jit.load``."""
    path = Path(path)
    if not path.is_file():
        raise CnnbenchError(f"no exported model file {path}")
    if path.suffix == ".onnx":
        need_onnx()
        return _open_onnx(path, threads)
    if path.suffix == ".pt":
        return _open_torchscript(path)
    raise CnnbenchError(f"{path}: an exported model ends in .onnx or .pt")


def _open_onnx(path: Path, threads: int | None) -> ExportedFile:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own kinds for a bad file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CnnbenchError(f"{path} is not an ONNX model onnxruntime can load ({reason})") \
            from None
    props = session.get_modelmeta().custom_metadata_map
    meta = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}
    name = session.get_inputs()[0].name

    def run(images):
        array = images.numpy() if isinstance(images, torch.Tensor) else images
        return session.run(None, {name: array})

    return ExportedFile(path, "onnx", meta, run)


def _open_torchscript(path: Path) -> ExportedFile:
    from torch.utils._pytree import tree_leaves

    extra = {f"{METADATA_KEY}.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # a checkpoint or another file: torch.jit raises RuntimeError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
        raise CnnbenchError(f"{path} is not a TorchScript file (a checkpoint is exported with "
                            f"`cnnbench export RUN` first) ({reason})") from None
    meta = json.loads(extra[f"{METADATA_KEY}.json"] or "{}")

    def run(images):
        images = torch.from_numpy(images) if not isinstance(images, torch.Tensor) else images
        with torch.inference_mode():
            return [t.numpy() for t in tree_leaves(module(images))]

    return ExportedFile(path, "torchscript", meta, run)


# -- checking --

def check_images(loaded: RunModel, n: int = CHECK_IMAGES) -> torch.Tensor:
    """The first ``n`` test images of the run's data, uint8 at the model's input size."""
    from cnnbench.data import transforms as T
    from cnnbench.data.sources import load_data

    images = load_data(dict(loaded.config), type(loaded.task)).test.images[:n]
    size = loaded.input_shape[1:]
    if tuple(images.shape[-2:]) != size:  # stored smaller or larger than the model's input
        images = T.resize(T.to_float(images), size).mul(255).round().clamp(0, 255)
        images = images.to(torch.uint8)
    return images


def eager_outputs(loaded: RunModel, images: torch.Tensor) -> list[torch.Tensor]:
    """The reference on uint8 ``images``: the task's ``prepare`` (test time), the PyTorch
    model, then the task's decoding (``OUTPUTS``)."""
    from torch.utils._pytree import tree_leaves

    from cnnbench.predict import PREDICTORS

    task = loaded.task
    targets = PREDICTORS[loaded.config["task"]].targets(task, images.shape[0])
    with torch.inference_mode():
        x, _ = task.prepare(images, targets, train=False)
        output = OUTPUTS[loaded.config["task"]][2](task)(loaded.model(x))
    return [t.float() for t in tree_leaves(output)]


def max_difference(exported: ExportedFile, loaded: RunModel,
                   images: torch.Tensor) -> tuple[float, float]:
    """The largest absolute difference between the file's outputs and the eager model's, on
    uint8 ``images`` as one batch and on the first image alone (another batch size), and the
    largest absolute eager output (the scale that difference is to be read against). A file
    taking floats gets the same pixels / 255."""
    from cnnbench.data import transforms as T

    worst = scale = 0.0
    for batch in (images, images[:1]):
        feed = batch if exported.meta["input"]["dtype"] == "uint8" else T.to_float(batch)
        got = exported(feed.contiguous())
        want = eager_outputs(loaded, batch)
        if len(got) != len(want):
            raise CnnbenchError(f"{exported.path} returns {len(got)} outputs, the model "
                                f"{len(want)}")
        for g, w in zip(got, want):
            g = torch.as_tensor(g).float()
            if g.shape != w.shape:
                raise CnnbenchError(f"{exported.path}: output shape {list(g.shape)}, the "
                                    f"model's {list(w.shape)}")
            worst = max(worst, float((g - w).abs().max()))
            scale = max(scale, float(w.abs().max()))
    return worst, scale


# -- export --

def export(run: str | Path, fmt: str = "onnx", checkpoint: str = "best",
           out: str | Path | None = None, input_dtype: str = "uint8",
           check: int = CHECK_IMAGES) -> dict:
    """Write the run's checkpoint as ``fmt`` to ``out`` (default ``RUN/export/``), load it back
    and compare it with the eager model on ``check`` test images; returns what was written and
    the largest difference."""
    from cnnbench import files

    _check_request(fmt, input_dtype, out)
    loaded = _load_run(run, checkpoint)
    refused = _refusal(loaded)
    if refused:
        raise CnnbenchError(refused)
    path = Path(out) if out is not None else default_out(loaded.run, checkpoint, fmt)
    files.check_folder(path.parent, "--out")  # made below when new
    if path.parent.is_dir():
        path = files.check_file(path, "--out")
    images = check_images(loaded, check)
    if not len(images):
        raise CnnbenchError(f"{loaded.run}: the test split is empty, nothing to check on")
    meta = metadata(loaded, fmt, input_dtype)
    module = Exported(loaded, input_dtype).eval()
    example = images[:2] if input_dtype == "uint8" else images[:2].float() / 255
    example = example.contiguous()  # a batch of 2: the batch dimension stays free

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        with files.guarded(path):  # the exporters write to a path: the guard names the cause
            path.parent.mkdir(parents=True, exist_ok=True)
            WRITERS[fmt](module, example, meta, tmp)
        difference, scale = max_difference(open_exported(tmp), loaded, images)
        with files.guarded(path):
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(path), "bytes": path.stat().st_size, **meta,
            "checked_images": len(images), "max_abs_diff": difference,
            "max_abs_output": scale}
