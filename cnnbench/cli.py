"""The command line: parse options, call library functions, render the result.

Every command has ``--json``. Errors a user can cause are ``CnnbenchError``s: one line on
stderr and exit code 2. Heavy modules (torchvision, tensorboard) are imported by the commands
that need them, so that ``cnnbench summary`` starts about as fast as ``import torch``.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from cnnbench import __version__
from cnnbench.errors import CnnbenchError

app = typer.Typer(
    name="cnnbench",
    help="Layer tables, training runs, speed figures and receptive fields for classic CNNs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

MODEL_HELP = "A registered name (see `cnnbench models`) or torchvision:<name>."
INPUT_HELP = "Input size CxHxW, HxW or one number (default: the model's own)."
MODEL_ARG_HELP = "KEY=VALUE passed to the model's builder (repeatable), e.g. ratio=4."
JSON_HELP = "Print JSON on stdout instead of a table."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Layer tables, training runs, speed figures and receptive fields for classic CNNs.

    Examples: `cnnbench models`, `cnnbench summary densenet`,
    `cnnbench summary torchvision:resnet50 --depth 2`.
    """


# --- models and summary (issue 2) ---

@app.command()
def models(task: Optional[str] = typer.Option(None, help="Only models of this task."),
           as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List every registered model: task, default input, parameter count and source.

    Examples: `cnnbench models`, `cnnbench models --task detection --json`.
    """
    from cnnbench import render
    from cnnbench.registry import model_rows

    rows = model_rows(task)
    render.print_json(rows) if as_json else render.models_table(rows)


@app.command()
def summary(
    model: str = typer.Argument(..., help=MODEL_HELP),
    input_size: Optional[str] = typer.Option(None, "--input-size", "-i", help=INPUT_HELP),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Batch size of the input."),
    depth: int = typer.Option(3, "--depth", "-d", help="How deep to show nested modules."),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", "-m", help=MODEL_ARG_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Layer table: output shape, parameters and FLOPs of every layer, with totals.

    Examples: `cnnbench summary densenet`, `cnnbench summary vgg11 -m ratio=4 --depth 1`,
    `cnnbench summary unet -i 1x64x64 --json`, `cnnbench summary torchvision:resnet50`.
    """
    from cnnbench import render
    from cnnbench.inputs import parse_input_size, parse_model_args
    from cnnbench.registry import get_model_info
    from cnnbench.summary import summarize

    size = parse_input_size(input_size, get_model_info(model))
    result = summarize(model, size, batch_size=batch_size, depth=depth,
                       model_args=parse_model_args(model_arg))
    render.print_json(result) if as_json else render.summary_table(result)


# --- train and runs (issue 3) ---

# --- bench (issue 4) ---

# --- receptive-field (issue 5) ---


def main() -> None:
    try:
        app()
    except CnnbenchError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
