"""`cnnbench predict`: a run's checkpoint on image files (fastai's ``learn.predict``).

Each file is decoded by training's reader (``data.images.read_with_size``: the same tensor as in
training), grey or colour as the model's input channels, at the run's input size; the task's
``prepare`` then normalises it exactly as in training. The checkpoint holds the class names and
the normalisation (``Context``), so no data set is loaded (a checkpoint older than that loads
the run's data once to find them). What a task reports and draws is one entry of
``PREDICTORS``: the top classes, the boxes, or the share of the image each class covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from cnnbench.errors import CnnbenchError
from cnnbench.evaluate import open_run, output_folder
from cnnbench.files import guarded


def read_image(path: str | Path, channels: int,
               size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 ``[channels, H, W]`` of an image file (PNG, JPEG, anything Pillow reads) as
    training reads it, and the file's own ``(width, height)``."""
    from cnnbench.data import images

    path = Path(path)
    if not path.is_file():
        raise CnnbenchError(f"no image file {path}")
    try:
        pixels, original = images.read_with_size(path, size, channels)
    except images.BadImage as exc:
        raise CnnbenchError(f"{path} is not an image Pillow can read ({exc.reason})") from None
    return images.to_tensor(pixels), original


# -- per task: targets for ``prepare``, what to report, what to draw --

def _labels_only(task, n: int):
    return torch.zeros(n, dtype=torch.long)


def _no_objects(task, n: int):
    """Dense targets with no object (``-1`` labels pad), which ``prepare`` passes through."""
    return {"boxes": torch.zeros(n, 1, 4), "labels": torch.full((n, 1), -1),
            "multi_hot": torch.zeros(n, task.context.num_classes)}


def _ranked(scores: torch.Tensor, names, top: int) -> list[dict]:
    values, index = scores.topk(min(top, len(names)))
    return [{"class": names[int(i)], "score": float(v)} for v, i in zip(values, index)]


def _softmax_classes(task, output, top):
    names = task.context.class_names
    return [_ranked(p, names, top) for p in output.float().softmax(1)]


def _sigmoid_classes(task, output, top):
    names = task.context.class_names
    return [_ranked(p, names, top) for p in output.float().sigmoid()]


def _largest_object(task, output, top):
    names = task.context.class_names
    boxes = output[:, :4].float().sigmoid()
    return [[{**best, "box": box.tolist()} for best in _ranked(p, names, 1)]
            + _ranked(p, names, top)[1:]
            for box, p in zip(boxes, output[:, 4:].float().softmax(1))]


def _detections(task, output, top):
    names = task.context.class_names
    threshold = float(task.config["draw_threshold"])
    found = []
    for d in task.detect(output):
        keep = d["scores"] >= threshold
        found.append([{"class": names[int(k)], "score": float(s), "box": b.tolist()}
                      for b, k, s in zip(d["boxes"][keep], d["labels"][keep], d["scores"][keep])])
    return found


def _mask_shares(task, output, top):
    """The classes covering the most pixels (background left out), each with its share."""
    names = task.context.class_names
    k = task.model_classes(task.context.num_classes)
    found = []
    for mask in output.argmax(1):
        shares = torch.bincount(mask.flatten(), minlength=k)[1:].double() / mask.numel()
        found.append([p for p in _ranked(shares, names, top) if p["score"] > 0])
    return found


def _draw_caption(task, image, output, found):
    from cnnbench.plots import PREDICTION, Grid, Swatch, Tile

    lines = tuple((f"{p['class']} {p['score']:.2f}", PREDICTION) for p in found[:3])
    score = "sigmoid" if task.name == "multi-label" else "softmax"
    return Grid([Tile(image, lines or (("no class", PREDICTION),))], "top classes predicted",
                (Swatch(f"predicted class and its probability ({score})", PREDICTION),))


def _draw_boxes(task, image, output, found):
    from cnnbench import plots

    boxes = torch.tensor([p["box"] for p in found if "box" in p]).reshape(-1, 4)
    names = [f"{p['class']} {p['score']:.2f}" for p in found if "box" in p]
    threshold = task.config.get("draw_threshold")  # detection: the boxes above it
    predicted = ("predicted box (class, probability)" if threshold is None else
                 f"detection scoring \u2265 {threshold:g} (class, score)")
    return plots.Grid([plots.box_tile(image, [], [], boxes, names, threshold)], "boxes predicted",
                      plots.box_legend(truth=False, predicted=predicted))


def _draw_mask(task, image, output, found):
    from cnnbench.plots import Grid, Tile
    from cnnbench.tasks.segmentation import colour_key, overlay_masks

    k = task.model_classes(task.context.num_classes)
    tile = Tile(overlay_masks(image[None], output.argmax(0)[None], k)[0])
    return Grid([tile], "predicted mask (background not tinted)",
                colour_key(task.context.class_names), row_labels=("prediction",))


@dataclass(frozen=True)
class Predictor:
    targets: Callable  # (task, n) -> targets that ``prepare`` takes for images with no truth
    read: Callable  # (task, output batch, top) -> per image a list of {class, score[, box]}
    draw: Callable  # (task, uint8 image, its output, its list) -> a plots.Grid


PREDICTORS: dict[str, Predictor] = {
    "classification": Predictor(_labels_only, _softmax_classes, _draw_caption),
    "multi-label": Predictor(_no_objects, _sigmoid_classes, _draw_caption),
    "single-object": Predictor(_no_objects, _largest_object, _draw_boxes),
    "detection": Predictor(_no_objects, _detections, _draw_boxes),
    "segmentation": Predictor(_no_objects, _mask_shares, _draw_mask),
}


def load_model(config: dict, state: dict, device: torch.device):
    """``(task, model in eval mode on device)`` from a run's configuration and checkpoint."""
    from cnnbench.building import build
    from cnnbench.models import get_model_info
    from cnnbench.tasks.base import get_task, stored_context

    task_cls = get_task(config["task"])
    context = stored_context(state)
    if context is None:  # a checkpoint from before checkpoints held their context
        from cnnbench.data.sources import load_data

        context = task_cls.setup(config, load_data(config, task_cls),
                                 get_model_info(config["model"]))
    model, _ = build(config["model"], {**context.model_args, **config["model_args"]},
                     in_channels=config["input_size"][0])
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:120]
        raise CnnbenchError(f"the checkpoint does not fit {config['model']} ({reason})") \
            from None
    return task_cls(config, context), model.to(device).eval()


def predict(run: str | Path, images: list[str], checkpoint: str = "best", top: int = 3,
            out: str | Path | None = None, device: str | None = None) -> list[dict]:
    """Per file: the predictions (top ``top`` classes, the boxes or the mask's classes) and,
    with ``out``, the path of the picture with them drawn."""
    from cnnbench import recipe as cfg
    from cnnbench.devices import resolve_device

    run, config, state = open_run(run, checkpoint)
    predictor = PREDICTORS.get(config.get("task"))
    if predictor is None:
        raise CnnbenchError(f"{run} trained a {config.get('task')} task: predict knows "
                            f"{', '.join(PREDICTORS)}")
    if not images:
        raise CnnbenchError("give at least one image file")
    if top < 1:
        raise CnnbenchError(f"--top must be at least 1, not {top}")
    folder = output_folder(run, out) if out else None
    if device is not None:
        config["device"] = cfg.check("device", device, source="command line")
    channels, size = int(config["input_size"][0]), tuple(config["input_size"][-2:])
    read = [read_image(p, channels, size) for p in images]  # every file, before any work
    batch = torch.stack([pixels for pixels, _ in read])

    device = resolve_device(config["device"])
    task, model = load_model(config, state, device)
    targets = predictor.targets(task, len(images))
    with torch.inference_mode():
        x, _ = task.prepare(batch.to(device), _to(targets, device), train=False)
        output = _to(model(x), torch.device("cpu"))
    found = predictor.read(task, output, top)
    rows = [{"file": str(path), "size": list(original), "predictions": items,
             "summary": ", ".join(f"{p['class']} {p['score']:.2f}" for p in items[:1])
             or "nothing found", "picture": None}
            for path, (_, original), items in zip(images, read, found)]
    if folder is not None:
        from cnnbench import plots

        with guarded(folder):
            folder.mkdir(parents=True, exist_ok=True)
        taken = set()
        for i, row in enumerate(rows):
            name = _free_name(Path(row["file"]).stem, taken)
            grid = predictor.draw(task, batch[i], _index(output, i), row["predictions"])
            title = (f"{Path(row['file']).name}: {grid.what} by {run.name} "
                     f"({config['model']}, {checkpoint}.pt)")
            plots.save_png(plots.grid_figure(grid, title), folder / name)
            row["picture"] = str(folder / name)
    for row in rows:  # boxes in the file's own pixels (drawn above in fractions)
        w, h = row["size"]
        for p in row["predictions"]:
            if "box" in p:
                p["box"] = [round(v * s, 1) for v, s in zip(p["box"], (w, h, w, h))]
    return rows


def _to(tree, device):
    from torch.utils._pytree import tree_map_only

    return tree_map_only(torch.Tensor, lambda t: t.to(device), tree)


def _index(output, i: int):
    """Image ``i``'s part of a batch output (a detector's shared anchors stay whole)."""
    if isinstance(output, torch.Tensor):
        return output[i]
    return tuple(o if j == 0 else o[i:i + 1] for j, o in enumerate(output))


def _free_name(stem: str, taken: set) -> str:
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name
