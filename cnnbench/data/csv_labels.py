"""Your own labels in a CSV file: ``csv:LABELS.csv[,IMAGES_DIR]``, fast.ai's ``from_csv`` layout.

The file has a header row and one row per image: the first column is the image's file name
(under ``IMAGES_DIR``, default the CSV's own folder), the second its label, or, for the
multi-label task, its labels separated by spaces (the lesson's planet ``tags`` column). An
optional third column says where the image goes: ``split`` (``train``, ``val``/``valid`` or
``test``) or fastai's ``is_valid`` (true/false); what no row names is held out of the training
rows as an image folder's is. Class names are the sorted labels, or the ``classes`` key's list,
which every label must then be in.

Refused in one line, before any image is decoded: a file that is missing, a name given twice,
a column other than these, a row with no label (or, for classification, several), a label not
in ``classes``, an unknown split. The images are then read as an image folder's are
(``imagefolder.files_bundle``: in memory or streamed, ``--limit`` stratified).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

import torch

from cnnbench.data import imagefolder
from cnnbench.data.splits import DataBundle, Split
from cnnbench.errors import CnnbenchError, did_you_mean
from cnnbench.keys import Key, declare

KEYS = declare(
    Key("classes", None, list, help="csv: the class list every label must be in (default: the "
                                    "sorted labels)"),
)

SPLIT_COLUMNS = ("split", "is_valid")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "test": "test"}
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
HINT = "csv:LABELS.csv[,IMAGES_DIR] with a header row: file name, label(s)[, split or is_valid]"


def parse_argument(argument: str | None) -> tuple[Path, Path]:
    """``(CSV file, images folder)`` from ``LABELS.csv[,IMAGES_DIR]``."""
    return imagefolder.labels_and_images(argument, "--data csv", "CSV", HINT)


def read_rows(table: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (blank rows skipped), each cell stripped."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            rows = [[cell.strip() for cell in row] for row in csv.reader(f) if any(row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CnnbenchError(f"{table} is not a readable CSV file ({exc})") from None
    if len(rows) < 2:
        raise CnnbenchError(f"{table} has no rows under its header ({HINT})")
    header, body = rows[0], rows[1:]
    if len(header) < 2:
        raise CnnbenchError(f"{table} has {len(header)} column: {HINT}")
    for extra in header[2:3]:
        if extra not in SPLIT_COLUMNS:
            raise CnnbenchError(f"{table}: unknown column {extra!r}"
                                f"{did_you_mean(extra, SPLIT_COLUMNS)}; {HINT}")
    if len(header) > 3:
        raise CnnbenchError(f"{table}: unknown column {header[3]!r}; {HINT}")
    for n, row in enumerate(body, 2):
        if len(row) != len(header):
            raise CnnbenchError(f"{table} line {n} has {len(row)} cells, the header "
                                f"{len(header)}")
    return header, body


def load_bundle(argument: str | None, config: dict, multi_label: bool,
                say: Callable[[str], None] | None = None) -> DataBundle:
    """The splits the CSV describes, with labels (classification) or ``{"multi_hot": ...}``."""
    table, root = parse_argument(argument)
    header, rows = read_rows(table)
    seen: dict[str, int] = {}
    labels: list[list[str]] = []
    where: list[str] = []
    for n, row in enumerate(rows, 2):
        name = row[0]
        if name in seen:
            raise CnnbenchError(f"{table} line {n}: {name!r} is given twice (first on line "
                                f"{seen[name]})")
        seen[name] = n
        tags = row[1].split()
        if not tags or (not multi_label and len(tags) > 1):
            raise CnnbenchError(f"{table} line {n}: {name!r} has {len(tags)} labels; "
                                + ("each image needs one" if not tags else
                                   "the classification task takes one (multi-label: "
                                   "--set task=multi-label)"))
        labels.append(tags)
        where.append(_split_of(table, n, header, row))
    class_names = _class_names(table, rows, labels, config.get("classes"))
    files = _stamped(table, root, [row[0] for row in rows])
    index = {c: i for i, c in enumerate(class_names)}
    if multi_label:
        hot = torch.zeros(len(rows), len(class_names))
        for i, tags in enumerate(labels):
            hot[i, [index[t] for t in tags]] = 1.0
        targets = {"multi_hot": hot}
    else:
        targets = torch.tensor([index[tags[0]] for tags in labels], dtype=torch.int64)
    parts = {}
    for split in ("train", "val", "test"):
        rows_here = torch.tensor([i for i, s in enumerate(where) if s == split],
                                 dtype=torch.int64)
        if split == "train" or len(rows_here):
            parts[split] = Split(rows_here, _index(targets, rows_here))
    if not len(parts["train"]):
        raise CnnbenchError(f"{table} puts no image in the training split")
    return imagefolder.files_bundle(root, files, parts, class_names, config,
                                    f"csv:{argument}", say)


def _index(targets, rows):
    return {k: v[rows] for k, v in targets.items()} if isinstance(targets, dict) else targets[rows]


def _split_of(table: Path, n: int, header: list[str], row: list[str]) -> str:
    if len(header) < 3:
        return "train"
    value = row[2].lower()
    if header[2] == "is_valid":
        if value not in TRUE + FALSE:
            raise CnnbenchError(f"{table} line {n}: is_valid is {row[2]!r}, not true or false")
        return "val" if value in TRUE else "train"
    if value not in SPLIT_NAMES:
        raise CnnbenchError(f"{table} line {n}: split {row[2]!r} is not one of "
                            f"{', '.join(SPLIT_NAMES)}{did_you_mean(value, SPLIT_NAMES)}")
    return SPLIT_NAMES[value]


def _class_names(table: Path, rows, labels: list[list[str]], classes) -> list[str]:
    found = sorted({t for tags in labels for t in tags})
    if classes is None:
        return found
    classes = [str(c) for c in classes]
    for n, (row, tags) in enumerate(zip(rows, labels), 2):
        for tag in tags:
            if tag not in classes:
                raise CnnbenchError(f"{table} line {n}: label {tag!r} of {row[0]!r} is not in "
                                    f"classes{did_you_mean(tag, classes)}")
    return classes


def _stamped(table: Path, root: Path, names: list[str]) -> list[tuple[str, int, int]]:
    """``(path, size, mtime in ns)`` of each named file; a missing one is an error."""
    files = []
    for n, name in enumerate(names, 2):
        path = os.path.join(root, name)
        try:
            st = os.stat(path)
        except OSError:
            raise CnnbenchError(f"{table} line {n}: no image file {path}") from None
        files.append((path, st.st_size, st.st_mtime_ns))
    return files
