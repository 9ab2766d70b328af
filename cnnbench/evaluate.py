"""`cnnbench eval`: a run's checkpoint on its test split (or other data), with pictures.

The checkpoint's task and model come from the one inference loader (``inference.load``: no
optimizer, no schedule, so ``--limit`` and ``--data`` may give data of any size), and the
trainer's own evaluation (``inference.evaluator``) measures the test split: the same data,
batches, device and code as the test pass at the end of training, so on ``best.pt`` the figures
equal ``results.json``'s (``--ema``: its ``test_ema_*``). What each task adds is one entry of
``VIEWS``: its per-class table, its confusion matrix (if it has one) and its pictures, written
to ``RUN/eval/`` (or ``--out``). Nothing else in the run folder changes.

``--tta`` (test-time augmentation, classification and segmentation): every image is scored
twice, as it is and mirrored left-right (the mirrored output flipped back for masks), and the
class probabilities of the two are averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._pytree import tree_leaves

from cnnbench import inference
from cnnbench.errors import CnnbenchError
from cnnbench.files import RunLayout, check_folder, guarded
from cnnbench.tasks.metrics import confusion_matrix, f1_per_class

PICTURES = 8  # images drawn in a predictions grid
TOP_LOSSES = 16  # images in the top-losses grid (fastai's plot_top_losses)


# -- the run --

def output_folder(run: Path, out: str | Path | None) -> Path:
    """``out`` or ``RUN/eval``, checked writable (nothing is made yet)."""
    folder = Path(out) if out else RunLayout(run).eval
    if folder.exists() and not folder.is_dir():
        raise CnnbenchError(f"cannot write pictures to {folder}: it is a file")
    check_folder(folder, "--out" if out else None)
    return folder


# -- test-time augmentation --

class FlipTTA(nn.Module):
    """The model on the image and on its mirror image; returns the log of the mean class
    probabilities (scores whose softmax is that mean, so the task's loss and metrics apply)."""

    def __init__(self, model: nn.Module, unflip: Callable):
        super().__init__()
        self.model, self.unflip = model, unflip

    def forward(self, x):
        plain = self.model(x).float().log_softmax(1)
        mirrored = self.unflip(self.model(x.flip(-1))).float().log_softmax(1)
        return torch.logaddexp(plain, mirrored) - math.log(2)


# -- per task: the per-class table, the confusion matrix, the pictures --

def class_scores(confusion: torch.Tensor, names) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix (rows: true)."""
    confusion = torch.as_tensor(confusion).double()
    tp = confusion.diag()
    predicted, support = confusion.sum(0), confusion.sum(1)
    f1 = f1_per_class(tp, predicted - tp, support - tp)
    return [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for name, p, r, f, s in zip(names, tp / predicted.clamp(min=1),
                                        tp / support.clamp(min=1), f1, support)]


def _cat(outputs, pick) -> torch.Tensor:
    return torch.cat([pick(o, t) for o, t in outputs])


def _classification_confusion(task, outputs, report) -> torch.Tensor:
    return torch.tensor(report["confusion_matrix"])


def _single_object_confusion(task, outputs, report) -> torch.Tensor:
    pred = _cat(outputs, lambda o, t: o[:, 4:].argmax(1))
    true = _cat(outputs, lambda o, t: t["label"])
    return confusion_matrix(pred, true, task.context.num_classes)


def _segmentation_confusion(task, outputs, report) -> torch.Tensor:
    k = task.model_classes(task.context.num_classes)
    return sum(confusion_matrix(o.argmax(1).flatten(), t["masks"].flatten(), k)
               for o, t in outputs)


def _report_rows(**columns) -> Callable:
    """Per-class rows from the task's final report: ``column=report key``."""
    def rows(task, report, confusion, names):
        return [{"class": name, **{col: report[key].get(name) for col, key in columns.items()}}
                for name in names]
    return rows


def _miou_note(rows) -> str:
    """What segmentation's miou averages: the IoU column, background included."""
    counted = [r for r in rows if r["iou"] is not None and not math.isnan(r["iou"])]
    absent = len(rows) - len(counted)
    return (f"miou is the mean of the {len(counted)} IoUs above, background included"
            + (f"; {absent} class{'es' * (absent > 1)} neither in the truth nor predicted "
               f"{'have' if absent > 1 else 'has'} no IoU and {'are' if absent > 1 else 'is'} "
               "left out" if absent else ""))


def _confusion_rows(task, report, confusion, names):
    return class_scores(confusion, names)


def top_losses(outputs, names, n: int = TOP_LOSSES) -> list[dict]:
    """The ``n`` test images with the highest cross-entropy (fastai's ``top_losses``): index,
    actual and predicted class, loss and the probability given to the actual class."""
    logits = _cat(outputs, lambda o, t: o.float())
    labels = _cat(outputs, lambda o, t: t)
    losses = F.cross_entropy(logits, labels, reduction="none")
    probs = logits.softmax(1)
    worst = losses.argsort(descending=True)[:n]
    return [{"index": int(i), "actual": names[int(labels[i])],
             "predicted": names[int(probs[i].argmax())], "loss": float(losses[i]),
             "probability": float(probs[i, labels[i]])} for i in worst]


def _top_losses(task, outputs) -> dict:
    return {"top_losses": top_losses(outputs, task.context.class_names)}


def _classification_pictures(task, images, outputs, result) -> dict:
    from cnnbench.plots import PREDICTION, TRUTH, Grid, Swatch, Tile

    worst = result["top_losses"]
    tiles = [Tile(images[w["index"]].cpu(),
                  ((f"pred {w['predicted']}", PREDICTION), (f"true {w['actual']}", TRUTH),
                   (f"loss {w['loss']:.2f}, p(true) {w['probability']:.2f}", "black")))
             for w in worst]
    legend = (Swatch("predicted class", PREDICTION), Swatch("true class", TRUTH),
              Swatch("cross-entropy loss, probability given to the true class", "black"))
    return {"top_losses": Grid(tiles, f"the {len(worst)} highest losses", legend)}


def _first_batch(outputs) -> tuple:
    """``(output, targets, n)``: the first batch and how many of its images to draw."""
    output, targets = outputs[0]
    return output, targets, min(PICTURES, len(tree_leaves(targets)[0]))


def _label_pictures(task, images, outputs, result) -> dict:
    """Multi-label: the first test images with their true classes (green) and the classes
    scoring above ``threshold`` (red)."""
    from cnnbench.plots import PREDICTION, TRUTH, Grid, Swatch, Tile

    names, threshold = task.context.class_names, float(task.config["threshold"])
    scores = _cat(outputs, lambda o, t: o.float().sigmoid())[:2 * PICTURES]
    truth = _cat(outputs, lambda o, t: t["multi_hot"])[:len(scores)]

    def listed(row, empty):
        return ", ".join(names[int(j)] for j in row.nonzero().flatten()) or empty

    tiles = [Tile(image, ((listed(t, "no class"), TRUTH),
                          (listed(p > threshold, f"no class above {threshold:g}"), PREDICTION)))
             for image, t, p in zip(images[:len(scores)].cpu(), truth, scores)]
    legend = (Swatch("true classes", TRUTH),
              Swatch(f"predicted classes (probability above {threshold:g})", PREDICTION))
    what = f"true and predicted classes of the first {len(tiles)} images"
    return {"predictions": Grid(tiles, what, legend)}


def _box_pictures(task, images, outputs, result) -> dict:
    from cnnbench import plots

    output, targets, n = _first_batch(outputs)
    threshold = task.config.get("draw_threshold")  # detection: its boxes above it
    tiles = [plots.box_tile(image, *drawn, threshold=threshold)
             for image, drawn in zip(images[:n].cpu(), task.boxes_drawn(output, targets, n))]
    predicted = ("predicted box and class" if threshold is None else
                 f"detection scoring \u2265 {threshold:g} (class, score)")
    return {"predictions": plots.Grid(tiles, f"true and predicted boxes of the first {n} images",
                                      plots.box_legend(predicted=predicted), ncols=4)}


def _mask_pictures(task, images, outputs, result) -> dict:
    from cnnbench.plots import Grid, Tile
    from cnnbench.tasks.segmentation import colour_key, overlay_masks

    k = task.model_classes(task.context.num_classes)
    output, targets, n = _first_batch(outputs)
    shown = images[:n].cpu()
    rows = torch.cat([overlay_masks(shown, output[:n].argmax(1), k),  # predicted, then true
                      overlay_masks(shown, targets["masks"][:n], k)])
    return {"predictions": Grid([Tile(r) for r in rows], f"predicted and true masks of the "
                                f"first {n} images, background not tinted",
                                colour_key(task.context.class_names),
                                row_labels=("prediction", "truth"), ncols=n)}


@dataclass(frozen=True)
class View:
    """What ``eval`` shows for one task, besides its metrics."""

    rows: Callable  # (task, report, confusion, class names) -> per-class rows
    confusion: Callable | None = None  # (task, outputs, report) -> [k, k] counts
    pictures: Callable | None = None  # (task, images, outputs, result) -> {name: plots.Grid}
    extra: Callable | None = None  # (task, outputs) -> more entries of the result
    unflip: Callable | None = None  # --tta: the mirrored output put back (None: no TTA)
    background: bool = False  # the confusion matrix and the table have a background class first
    note: Callable | None = None  # (per-class rows) -> a line on what the table's mean covers


VIEWS: dict[str, View] = {
    "classification": View(_confusion_rows, _classification_confusion, _classification_pictures,
                           extra=_top_losses, unflip=lambda o: o),
    "single-object": View(_confusion_rows, _single_object_confusion, _box_pictures),
    "multi-label": View(_report_rows(f1="per_class_f1", ap="per_class_ap"), None,
                        _label_pictures),
    "segmentation": View(_report_rows(iou="per_class_iou"), _segmentation_confusion,
                         _mask_pictures, unflip=lambda o: o.flip(-1), background=True,
                         note=_miou_note),
    "detection": View(_report_rows(ap50="per_class_ap50"), None, _box_pictures),
}


# -- eval --

def evaluate(run: str | Path, checkpoint: str = "best", data: str | None = None,
             limit: int | None = None, device: str | None = None, tta: bool = False,
             out: str | Path | None = None, ema: bool = False) -> dict:
    """The test metrics of a run's checkpoint (``ema``: of its model EMA), its per-class table
    and confusion matrix, and pictures (confusion matrix, top losses, predictions against the
    truth) written to ``out`` (default ``RUN/eval``). ``data``/``limit``/``device`` replace the
    run's own."""
    weights = "ema" if ema else "model"
    overrides = inference.check_overrides({"data": data, "limit": limit, "device": device})
    opened = inference.open_checkpoint(run, checkpoint)
    task_name = opened.config.get("task")
    view = VIEWS.get(task_name)
    if view is None:
        raise CnnbenchError(f"{run} trained a {task_name} task: eval knows {', '.join(VIEWS)}")
    if tta and view.unflip is None:
        raise CnnbenchError(f"--tta is for {', '.join(k for k, v in VIEWS.items() if v.unflip)} "
                            f"runs, not {task_name}")
    run = opened.run or opened.file.parent
    folder = output_folder(run, out)
    loaded = inference.restore(opened, weights, overrides)
    trainer = inference.evaluator(loaded)
    split = trainer.test_split
    if not len(split):
        raise CnnbenchError("the test split is empty (check --limit and --data)")
    if tta:
        trainer.net = FlipTTA(trainer.model, view.unflip)
    metrics, outputs = trainer.evaluate(split, collect=True)
    task = trainer.task
    report = task.final_report(outputs)
    names = list(task.context.class_names)
    confusion = view.confusion(task, outputs, report) if view.confusion else None
    axis = ["background", *names] if view.background else names
    rows = view.rows(task, report, confusion, axis)
    result = {
        "run": str(run), "model": loaded.config["model"], "task": task.name,
        "checkpoint": checkpoint, "weights": weights, "epoch": loaded.epoch,
        "data": loaded.config.get("data"), "images": len(split), "tta": tta,
        "metrics": metrics,
        "per_class": rows,
        "per_class_note": view.note(rows) if view.note else None,
        "class_names": names,
        "confusion_matrix": None if confusion is None else confusion.tolist(),
        "report": report,
        "pictures": {},
    }
    result.update(view.extra(task, outputs) if view.extra else {})
    files = getattr(split, "files", None)  # the user's own images name their files
    for worst in result.get("top_losses", []) if files else ():
        worst["file"] = files[worst["index"]]
    pictures = view.pictures(task, split.images, outputs, result) if view.pictures else {}
    with guarded(folder):
        folder.mkdir(parents=True, exist_ok=True)
    from cnnbench import plots

    if confusion is not None:
        path = folder / "confusion.png"
        plots.save_confusion_png(confusion, axis, path, _title(result, "confusion matrix"),
                                 normalize_rows=view.background)
        result["pictures"]["confusion"] = str(path)
    for name, grid in pictures.items():
        path = folder / f"{name}.png"
        plots.save_png(plots.grid_figure(grid, _title(result, grid.what)), path)
        result["pictures"][name] = str(path)
    return result


def _title(result: dict, what: str) -> str:
    tta = ", TTA" if result["tta"] else ""
    tta += ", EMA" if result["weights"] == "ema" else ""
    return (f"{Path(result['run']).name} ({result['model']}), {result['checkpoint']}.pt of "
            f"epoch {result['epoch']}{tta}: {what} ({result['images']:,} test images)")
