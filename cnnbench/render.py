"""Rendering for people (rich tables) and machines (JSON); data on stdout, messages on stderr.

Rich turns colour off by itself when ``NO_COLOR`` is set or the output is not a terminal.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def human(n: float, unit: str = "", base: int = 1000) -> str:
    """12_345_678 -> '12.35 M' (``base`` 1024 for bytes: 'MiB')."""
    prefixes = ["", "K", "M", "G", "T", "P"]
    i = 0
    while abs(n) >= base and i < len(prefixes) - 1:
        n /= base
        i += 1
    prefix = prefixes[i] + ("i" if base == 1024 and i else "")
    return f"{n:,.0f} {unit}".rstrip() if i == 0 else f"{n:.2f} {prefix}{unit}"


def fmt_shape(shape) -> str:
    if shape is None:
        return "--"
    if shape and all(isinstance(s, int) for s in shape):
        return "[" + ", ".join(str(s) for s in shape) + "]"
    if isinstance(shape, dict):
        return " ".join(f"{k}: {fmt_shape(v)}" for k, v in shape.items())
    return " ".join(fmt_shape(s) for s in shape)


def models_table(rows: list[dict]) -> None:
    table = Table(title="Registered models", title_justify="left")
    for col, justify in (("name", "left"), ("task", "left"), ("input", "left"),
                         ("params", "right"), ("source", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "source")
    for r in rows:
        table.add_row(r["name"], r["task"], "x".join(map(str, r["input_size"])),
                      f"{r['params']:,}", r["source"])
    out.print(table)
    out.print("Any torchvision model too: torchvision:<name> (e.g. torchvision:resnet50).")


def summary_table(s: dict) -> None:
    table = Table(title=f"{s['model']}  (input {fmt_shape(s['input_size'])})",
                  title_justify="left")
    table.add_column("layer (type)", no_wrap=True)
    table.add_column("output shape", no_wrap=True)
    table.add_column("params", justify="right")
    table.add_column("trainable", justify="center")
    table.add_column("FLOPs", justify="right")
    for layer in s["layers"]:
        indent = "  " * (layer["depth"] - 1)
        table.add_row(f"{indent}{layer['name']} ({layer['type']})", fmt_shape(layer["output_shape"]),
                      f"{layer['params']:,}" if layer["params"] else "--",
                      ("yes" if layer["trainable"] else "no") if layer["params"] else "--",
                      human(layer["flops"]) if layer["flops"] else "--")
    out.print(table)
    lines = [
        ("Total params", f"{s['total_params']:,}"),
        ("Trainable params", f"{s['trainable_params']:,}"),
        ("Non-trainable params", f"{s['non_trainable_params']:,}"),
        ("Total FLOPs", f"{human(s['flops'], 'FLOPs')}  (1 multiply-add = 2 FLOPs; "
                        f"batch {s['input_size'][0]})"),
        ("Input size", f"{fmt_shape(s['input_size'])}  ({human(s['input_bytes'], 'B', 1024)})"),
        ("Output", fmt_shape(s["outputs"])),
        ("Parameter memory", human(s["param_bytes"], "B", 1024) + "  (parameters and buffers)"),
        ("Activation memory", human(s["activation_bytes"], "B", 1024)
         + "  (estimate: outputs of all leaf layers, kept for backward)"),
    ]
    lines += [("Note", n) for n in s["notes"]]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.print(f"{key:<{width}}  {value}")
