"""`cnnbench predict`: a run's checkpoint on image files (fastai's ``learn.predict``).

Each file is decoded by training's reader (``data.images.read_with_size``: the same tensor as in
training), grey or colour as the model's input channels, at the run's input size; the task's
``prepare`` then normalises it exactly as in training. The task and the model come from the
one inference loader (``inference``): the checkpoint holds the class names and the
normalisation (``Context``), so no data set is loaded (a checkpoint older than that loads the
run's data once to find them). What a task reports and draws is one entry of
``PREDICTORS``: the top classes, the boxes, or the share of the image each class covers.

Folders give their image files (recursively, sorted). Every file's header is checked before any
work; the files are then read and predicted ``--batch-size`` at a time and each row is handed on
(``predict_stream``) or written to the CSV table (``predict_csv``) as it comes, so memory stays
flat in the number of files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from cnnbench import inference
from cnnbench.errors import CnnbenchError
from cnnbench.evaluate import output_folder
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


BATCH_SIZE = 64  # files read and predicted at a time: memory stays flat in the number of files


def image_files(inputs: list[str | Path]) -> list[Path]:
    """The files named, and the image files under each folder named (recursively, sorted by
    path; any suffix Pillow knows), in the order given. A name that is neither, or a folder
    with no image in it, is a one-line error."""
    from PIL import Image

    suffixes = {s.lower() for s in Image.registered_extensions()}
    files: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                raise CnnbenchError(f"no image files in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CnnbenchError(f"no image file or folder {path}")
    return files


def check_readable(path: Path) -> None:
    """Pillow recognises ``path`` (its header only: cheap enough for every file up front)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else \
            type(exc).__name__
        raise CnnbenchError(f"{path} is not an image Pillow can read ({reason})") from None


def predict(run: str | Path, images: list[str], checkpoint: str = "best", top: int = 3,
            out: str | Path | None = None, device: str | None = None,
            batch_size: int = BATCH_SIZE) -> list[dict]:
    """Per file: the predictions (top ``top`` classes, the boxes or the mask's classes) and,
    with ``out``, the path of the picture with them drawn. Folders give their image files."""
    return list(predict_stream(run, images, checkpoint, top, out, device, batch_size)[1])


def predict_stream(run: str | Path, images: list[str], checkpoint: str = "best", top: int = 3,
                   out: str | Path | None = None, device: str | None = None,
                   batch_size: int = BATCH_SIZE) -> tuple[dict, Iterator[dict]]:
    """``(what is predicted, the rows one file at a time)``: everything is checked here (the
    run, the options, every file's header) before the first row; the files are then read and
    predicted ``batch_size`` at a time, so memory does not grow with their number."""
    overrides = inference.check_overrides({"device": device})
    opened = inference.open_checkpoint(run, checkpoint)
    run, config = opened.run or opened.file.parent, opened.config
    predictor = PREDICTORS.get(config.get("task"))
    if predictor is None:
        raise CnnbenchError(f"{run} trained a {config.get('task')} task: predict knows "
                            f"{', '.join(PREDICTORS)}")
    if not images:
        raise CnnbenchError("give at least one image file or folder")
    if top < 1:
        raise CnnbenchError(f"--top must be at least 1, not {top}")
    if batch_size < 1:
        raise CnnbenchError(f"--batch-size must be at least 1, not {batch_size}")
    folder = output_folder(run, out) if out else None
    files = image_files(images)
    for path in files:  # every file, before any work
        check_readable(path)
    loaded = inference.restore(opened, overrides=overrides)
    task, model, device, config = loaded.task, loaded.model, loaded.device, loaded.config
    about = {"run": str(run), "model": config["model"], "task": config["task"],
             "checkpoint": checkpoint, "files": len(files), "top": top}
    rows = _rows(task, model, predictor, files, config, device, top, folder, batch_size,
                 {**about, "run_name": run.name})
    return about, rows


def _rows(task, model, predictor, files, config, device, top, folder, batch_size, about):
    channels, size = int(config["input_size"][0]), tuple(config["input_size"][-2:])
    taken: set = set()
    if folder is not None:
        with guarded(folder):
            folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        read = [read_image(p, channels, size) for p in chunk]
        batch = torch.stack([pixels for pixels, _ in read])
        targets = predictor.targets(task, len(chunk))
        with torch.inference_mode():
            x, _ = task.prepare(batch.to(device), _to(targets, device), train=False)
            output = _to(model(x), torch.device("cpu"))
        found = predictor.read(task, output, top)
        for i, (path, (_, original), items) in enumerate(zip(chunk, read, found)):
            row = {"file": str(path), "size": list(original), "predictions": items,
                   "summary": ", ".join(f"{p['class']} {p['score']:.2f}" for p in items[:1])
                   or "nothing found", "picture": None}
            if folder is not None:
                from cnnbench import plots

                name = _free_name(path.stem, taken)
                grid = predictor.draw(task, batch[i], _index(output, i), items)
                title = (f"{path.name}: {grid.what} by {about['run_name']} "
                         f"({about['model']}, {about['checkpoint']}.pt)")
                plots.save_png(plots.grid_figure(grid, title), folder / name)
                row["picture"] = str(folder / name)
            w, h = original  # boxes in the file's own pixels (drawn above in fractions)
            for p in items:
                if "box" in p:
                    p["box"] = [round(v * s, 1) for v, s in zip(p["box"], (w, h, w, h))]
            yield row


# -- the table: one CSV row per file --

def csv_columns(task: str, top: int) -> list[str]:
    """``file, width, height`` and per rank ``class_i, score_i`` (segmentation: ``share_i``,
    the part of the image the class covers), with ``box_i`` (x0 y0 x1 y1 in the file's
    pixels) for the box tasks."""
    score = "share" if task == "segmentation" else "score"
    box = task in ("single-object", "detection")
    columns = ["file", "width", "height"]
    for i in range(1, top + 1):
        columns += [f"class_{i}", f"{score}_{i}"] + ([f"box_{i}"] if box else [])
    return columns


def csv_row(row: dict, task: str, top: int) -> list:
    score = "share" if task == "segmentation" else "score"
    cells = {"file": row["file"], "width": row["size"][0], "height": row["size"][1]}
    for i, p in enumerate(row["predictions"][:top], 1):
        cells[f"class_{i}"], cells[f"{score}_{i}"] = p["class"], f"{p['score']:.6g}"
        if "box" in p:
            cells[f"box_{i}"] = " ".join(f"{v:g}" for v in p["box"])
    return [cells.get(c, "") for c in csv_columns(task, top)]


def predict_csv(run: str | Path, images: list[str], csv_path: str | Path,
                checkpoint: str = "best", top: int = 3, out: str | Path | None = None,
                device: str | None = None, batch_size: int = BATCH_SIZE,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Predict every file (folders: their image files) into ``csv_path``, one row per file,
    written as the batches are predicted (nothing kept in memory) and renamed into place at the
    end; ``progress(done, total)`` is called after each batch."""
    import csv
    import io
    import time

    from cnnbench import files

    csv_path = files.check_file(csv_path, "--csv")
    t0 = time.perf_counter()
    about, rows = predict_stream(run, images, checkpoint, top, out, device, batch_size)

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(csv_columns(about["task"], top))
        for i, row in enumerate(rows, 1):
            writer.writerow(csv_row(row, about["task"], top))
            if progress is not None and (i % batch_size == 0 or i == about["files"]):
                progress(i, about["files"])
        text.flush()
        text.detach()  # the file stays open for files.write_with to close

    files.write_with(csv_path, write)
    return {**about, "csv": str(csv_path), "batch_size": batch_size,
            "seconds": time.perf_counter() - t0}


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
