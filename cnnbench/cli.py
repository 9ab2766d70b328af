"""The command line: parse options, call library functions, render the result.

Every command has ``--json``. Errors a user can cause are ``CnnbenchError``s: one line on
stderr and exit code 2. Heavy modules (torchvision, tensorboard) are imported by the commands
that need them, so that ``cnnbench summary`` starts about as fast as ``import torch``.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import List, Optional

import typer
import typer.main

from cnnbench import __version__
from cnnbench.errors import CnnbenchError, unforeseen
from cnnbench.files import check_file, report
from cnnbench.training.optimizers import OPTIMIZERS
from cnnbench.training.schedules import SCHEDULES

app = typer.Typer(
    name="cnnbench",
    help="Layer tables, training runs, speed figures and receptive fields for classic CNNs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

MODEL_HELP = ("A registered name (see `cnnbench models`) or torchvision:NAME "
              "(e.g. torchvision:resnet50).")
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

    Examples:

    * `cnnbench models`

    * `cnnbench models --task detection --json`
    """
    from cnnbench import render
    from cnnbench.models import model_rows

    rows = model_rows(task)
    render.print_json(rows) if as_json else render.models_table(rows)


@app.command()
def summary(
    model: str = typer.Argument(..., help=MODEL_HELP),
    input_size: Optional[List[str]] = typer.Option(
        None, "--input-size", "-i", help=INPUT_HELP + " Repeat it for a forward that takes "
                                                      "several inputs."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", help="Batch size of the input."),
    depth: int = typer.Option(3, "--depth", "-d", help="How deep to show nested modules."),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", "-m", help=MODEL_ARG_HELP),
    columns: Optional[str] = typer.Option(
        None, "--columns", help="Comma-separated, or all: input_shape, output_shape, kernel, "
                                "params, params_percent, trainable, flops, rf (torchinfo's names "
                                "work too). Default: output_shape,params,trainable,flops."),
    mode: str = typer.Option("eval", "--mode", help="eval or train: the mode of the pass."),
    dtype: str = typer.Option("float32", "--dtype",
                              help="float32, bfloat16, float16 or float64."),
    device: str = typer.Option("auto", "--device", help=(
        "auto (the CPU, or meta where that is quicker or memory is short), cpu, cuda or meta.")),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="A row per weight and bias tensor under its layer."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Layer table: output shape, parameters and FLOPs of every layer, with totals.

    FLOPs count one multiply-add as 2 (torch.utils.flop_counter). Examples:

    * `cnnbench summary densenet`

    * `cnnbench summary vgg11 -m ratio=4 --depth 1`

    * `cnnbench summary unet -i 1x64x64 --json`

    * `cnnbench summary torchvision:resnet50 --batch-size 8`

    * `cnnbench summary lenet --columns input_shape,output_shape,kernel,params_percent,rf -v`
    """
    from cnnbench import render
    from cnnbench.building import check_memory
    from cnnbench.inputs import parse_input_size, parse_model_args
    from cnnbench.models import get_model_info
    from cnnbench.summary import parse_columns, summarize

    options = parse_model_args(model_arg)
    shown = parse_columns(columns)
    info = get_model_info(model)
    sizes = [parse_input_size(text, info, options) for text in input_size or [None]]
    for size in sizes:
        check_memory(size, batch_size, name=model, model_args=options)
    result = summarize(model, sizes if len(sizes) > 1 else sizes[0], batch_size=batch_size,
                       depth=depth, model_args=options, columns=shown, mode=mode, dtype=dtype,
                       device=device, verbose=verbose)
    render.print_json(result) if as_json else render.summary_table(result, shown)


# --- train and runs (issue 3) ---

@app.command()
def train(
    model: Optional[str] = typer.Argument(None, help=MODEL_HELP + " May come from --config."),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="YAML recipe (default: experiments/MODEL.yaml if present)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e",
                                         help="Epochs in total (also when resuming)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=(
        "Images per optimizer step (per process with --nproc; default: the recipe's).")),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, help="; ".join(
        f"{name}: {o.description}" for name, o in OPTIMIZERS.items()) + "."),
    schedule: Optional[str] = typer.Option(None, help="; ".join(
        f"{name}: {s.description}" for name, s in SCHEDULES.items()) + "."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps."),
    amp: Optional[str] = typer.Option(None, help="none, bf16 (CUDA, CPU) or fp16 (CUDA)."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                            help="torch.compile the model."),
    seed: Optional[int] = typer.Option(None, help=(
        "Random seed of the weights, the shuffling and the augmentation (default: the "
        "recipe's, else 0); the validation split never changes with it.")),
    limit: Optional[int] = typer.Option(None, help="At most N images per split (quick runs)."),
    data: Optional[str] = typer.Option(
        None, "--data", help="Folder with the IDX files, or SOURCE[:PATH]: fashion-mnist, "
                             "scenes (dense tasks), voc:PATH (a local Pascal VOC 2007), "
                             "imagefolder:PATH (a class-per-folder tree), cifar10:PATH."),
    input_size: Optional[str] = typer.Option(None, "--input-size", "-i", help=INPUT_HELP),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", "-m", help=MODEL_ARG_HELP),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", "-s", help="KEY=VALUE for any config key (repeatable), "
                                  "e.g. label_smoothing=0.1."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir",
                                          help="Run folder (default runs/MODEL-TIME)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue this run folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line per epoch, no bar."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json at the end."),
    nproc: Optional[int] = typer.Option(None, "--nproc", help=(
        "Train in N processes (DistributedDataParallel, launched as torchrun does): gloo on "
        "the CPU, NCCL with one GPU each. --batch-size is per process.")),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", help=(
        "Train across N machines (torch elastic, c10d rendezvous): run the same command on "
        "each with its --node-rank, or once with --launcher slurm (one job of N nodes); "
        "--nproc processes on each (default 1).")),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", help=(
        "With --nnodes: this machine's node, 0 to N-1 (node 0 hosts the rendezvous).")),
    rdzv: Optional[str] = typer.Option(None, "--rdzv", help=(
        "With --nnodes: HOST:PORT of the rendezvous, on node 0 (e.g. node0:29400).")),
    rdzv_timeout: float = typer.Option(120.0, "--rdzv-timeout", help=(
        "With --nnodes: seconds to wait for the rendezvous and the other nodes.")),
    launcher: str = typer.Option("local", "--launcher", help=(
        "Where it trains: local (this machine) or slurm (one Slurm job through submitit, "
        "on --nnodes nodes, --nproc processes each; Slurm gives each node its rank and the "
        "rendezvous; followed until it ends).")),
    slurm: Optional[str] = typer.Option(None, "--slurm", help=(
        "With --launcher slurm: submitit's SlurmExecutor parameters, "
        "e.g. partition=gpu,gpus_per_node=4,time=60 (minutes).")),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved recipe (after "
                                 "the device profile and the options; JSON with --json), "
                                 "then exit without loading data or training."),
    keys: bool = typer.Option(False, "--keys", help="List every configuration key --set "
                              "accepts (with MODEL: its task's too and the recipe's values), "
                              "with default, type and help; JSON with --json."),
) -> None:
    """Train a model (classification, segmentation, detection...) on its task's data: metrics, TensorBoard, checkpoints in a run folder.

    The data are Fashion-MNIST by default (scenes drawn from it for the dense tasks), or
    `--data` (a class-per-folder tree, CIFAR-10, Pascal VOC).

    The recipe is `experiments/MODEL.yaml` when it exists (or `--config FILE`); options on the
    command line beat it. A run lives in `runs/MODEL-YYYYmmdd-HHMMSS/`. Examples:

    * `cnnbench train lenet`

    * `cnnbench train --config experiments/lenet-d2l.yaml`  (the book's settings)

    * `cnnbench train resnet18 --epochs 3 --lr 0.05 --set label_smoothing=0.1`

    * `cnnbench train lenet --limit 2000 --epochs 2 --quiet`

    * `cnnbench train unet --device cuda --dry-run`  (what a GPU run would train)

    * `cnnbench train --resume runs/lenet-20260101-120000 --epochs 20`

    * `cnnbench train --keys`, `cnnbench train unet --keys`  (every key --set accepts)

    * `cnnbench train resnet18 --device cuda --launcher slurm --nnodes 2 --nproc 4 --slurm
      partition=gpu,gpus_per_node=4,time=60`  (one training over two Slurm nodes)

    Watch a run with `tensorboard --logdir runs`; list runs with `cnnbench runs`.
    """
    from cnnbench import render
    from cnnbench import train as trainer
    from cnnbench.training.distributed import is_main

    overrides = _overrides(set_, model_arg, epochs=epochs, batch_size=batch_size, lr=lr,
                           optimizer=optimizer, schedule=schedule, device=device, amp=amp,
                           compile=compile_, seed=seed, limit=limit, data=data,
                           input_size=input_size)
    if keys:
        from cnnbench.recipe import key_rows

        rows = key_rows(model, config)
        render.print_json(rows) if as_json else render.keys_table(rows)
        return
    trainer.check_request(model, config, run_dir, resume, dry_run)
    if launcher == "slurm" and (node_rank is not None or rdzv):
        raise CnnbenchError("--launcher slurm gives each node its rank and the rendezvous: "
                            "leave out --node-rank and --rdzv")
    if (node_rank is not None or rdzv) and nnodes is None:
        raise CnnbenchError("--node-rank and --rdzv go with --nnodes N")
    if (launcher != "local" or slurm) and not dry_run:
        from cnnbench.launchers import get_launcher

        where = get_launcher(launcher, 1, slurm, nnodes=1 if nnodes is None else nnodes)
        result = trainer.submit_train(where, 1 if nproc is None else nproc, sys.argv[1:],
                                      model, config, overrides, run_dir=run_dir,
                                      resume=resume, say=render.err.print)
        render.print_json(result) if as_json else render.TrainReporter(quiet=True).finish(result)
        return
    if (nproc is not None or nnodes is not None) and not dry_run:
        from cnnbench.training.distributed import Nodes

        nodes = Nodes(nnodes, node_rank, rdzv, rdzv_timeout) if nnodes is not None else None
        raise typer.Exit(trainer.launch_train(1 if nproc is None else nproc, sys.argv[1:],
                                              model, config, overrides, run_dir=run_dir,
                                              resume=resume, nodes=nodes))
    reporter = render.TrainReporter(quiet=quiet or as_json,
                                    console=render.err if as_json else None)
    result = trainer.run(model, config, overrides, run_dir=run_dir, resume_dir=resume,
                         dry_run=dry_run, reporter=reporter)
    if dry_run:
        render.print_json(result) if as_json else render.print_yaml(result)
    elif as_json and is_main():  # one process prints under torchrun
        render.print_json(result)


def _overrides(set_: list[str] | None, model_arg: list[str] | None, **options) -> dict:
    """``--set``, ``--model-arg`` and the named options (those given) as configuration keys."""
    from cnnbench.inputs import parse_model_args
    from cnnbench.keys import parse_set

    overrides = parse_set(set_)
    overrides.update({k: v for k, v in options.items() if v is not None})
    if model_arg:
        overrides["model_args"] = parse_model_args(model_arg)
    return overrides


@app.command("lr-find")
def lr_find(
    model: Optional[str] = typer.Argument(None, help=MODEL_HELP + " May come from --config."),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="YAML recipe (default: experiments/MODEL.yaml if present)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=(
        "Images per optimizer step (default: the recipe's).")),
    optimizer: Optional[str] = typer.Option(None, help=", ".join(OPTIMIZERS) + "."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps."),
    amp: Optional[str] = typer.Option(None, help="none, bf16 (CUDA, CPU) or fp16 (CUDA)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: the recipe's)."),
    limit: Optional[int] = typer.Option(None, help="At most N images per split (quick runs)."),
    data: Optional[str] = typer.Option(None, "--data", help="As `cnnbench train --data`."),
    input_size: Optional[str] = typer.Option(None, "--input-size", "-i", help=INPUT_HELP),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", "-m", help=MODEL_ARG_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s",
                                             help="KEY=VALUE for any config key (repeatable)."),
    start: float = typer.Option(1e-7, "--start", help="First learning rate of the sweep."),
    end: float = typer.Option(10.0, "--end", help="Last learning rate of the sweep."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps of the sweep."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Draw the curve to FILE.png."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Learning-rate finder: an exponential lr sweep over real training steps of the recipe.

    The smoothed loss (beta 0.98) is followed until it exceeds 4x its best; the suggestion is
    fastai's valley (halfway down the longest descent), with the steepest descent and the
    minimum / 10 beside it. Nothing is written to runs/; the trained
    weights are thrown away. Examples:

    * `cnnbench lr-find lenet --limit 5000 --plot lr.png`

    * `cnnbench lr-find resnet18 --start 1e-5 --end 1 --steps 60 --json`
    """
    from cnnbench import render
    from cnnbench.train import lr_find as find

    if plot:
        check_file(plot, "--plot")
    overrides = _overrides(set_, model_arg, batch_size=batch_size, optimizer=optimizer,
                           device=device, amp=amp, seed=seed, limit=limit, data=data,
                           input_size=input_size)
    result = find(model, config, overrides, start=start, end=end, steps=steps)
    if plot:
        from cnnbench.plots import save_lr_find_png

        save_lr_find_png(result, plot)
        result["plot"] = plot
    render.print_json(result) if as_json else render.lr_find_lines(result)


@app.command()
def runs(root: str = typer.Option("runs", "--dir", help="Folder holding the runs."),
         columns: Optional[str] = typer.Option(None, "--columns", help=(
             "Configuration keys to show too, comma-separated, e.g. lr,batch_size,optimizer.")),
         compare: Optional[List[str]] = typer.Option(None, "--compare", help=(
             "Runs to set side by side (repeat it, or list them after one --compare): the keys "
             "that differ, their metrics; --plot draws their learning curves.")),
         sweep_dir: Optional[str] = typer.Option(None, "--sweep", help=(
             "A sweep's folder: its settings against their metrics over the seeds; for a "
             "search, its trials, the pruned ones and the best, and Optuna's optimization "
             "history and parameter importances drawn to PNGs in the folder.")),
         plot: Optional[str] = typer.Option(None, "--plot", help=(
             "With --compare: the learning curves on shared axes, to FILE.png.")),
         more: Optional[List[str]] = typer.Argument(None, metavar="[RUN]...", help=(
             "More runs for --compare.")),
         as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List training runs: model, start, epochs, best validation and test metric, minutes.

    Examples: `cnnbench runs`, `cnnbench runs --columns lr,batch_size --json`,
    `cnnbench runs --compare RUN1 RUN2 --plot curves.png`,
    `cnnbench runs --sweep runs/sweep-lenet-3f2a9c1e`.
    """
    from cnnbench import render
    from cnnbench import runs as folders

    if more and not compare:
        raise CnnbenchError(f"runs takes no RUN argument without --compare (got {more[0]!r})")
    if compare and sweep_dir:
        raise CnnbenchError("--compare and --sweep are separate views: give one")
    if plot and not compare:
        raise CnnbenchError("--plot draws the learning curves of the runs of --compare")
    if plot:
        check_file(plot, "--plot")
    if sweep_dir:
        from cnnbench.sweep import is_search, summarize

        if is_search(sweep_dir):
            from cnnbench import search

            table = search.summarize(sweep_dir, pictures=True)
            render.print_json(table) if as_json else render.search_table(table)
        else:
            table = summarize(sweep_dir)
            render.print_json(table) if as_json else render.sweep_table(table)
    elif compare:
        result = folders.compare_runs([*compare, *(more or [])], root)
        if plot:
            from cnnbench.plots import save_curves_png

            save_curves_png(result, plot)
        render.print_json(result) if as_json else render.compare_table(result)
        if plot and not as_json:
            render.out.print(f"Learning curves written to {plot}")
    else:
        rows = folders.list_runs(root, [c.strip() for c in columns.split(",")]
                                 if columns else None)
        render.print_json(rows) if as_json else render.runs_table(rows, folders.sweep_dirs(root))


@app.command()
def sweep(
    model: Optional[str] = typer.Argument(None, help=MODEL_HELP + " May come from --file."),
    grid: Optional[List[str]] = typer.Option(None, "--grid", "-g", help=(
        "KEY=V1,V2,... (repeatable): the values to try, YAML as --set reads them "
        "(lists in brackets: betas=[0.9,0.99],[0.8,0.9]).")),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=(
        "Seeds, comma-separated: each setting runs once per seed (default: the recipe's).")),
    file: Optional[str] = typer.Option(None, "--file", "-f", help=(
        "A sweep YAML: model, config, grid, seeds; any other key is fixed for every run.")),
    config: Optional[str] = typer.Option(None, "--config", "-c", help=(
        "YAML recipe the runs start from (default: experiments/MODEL.yaml if present).")),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e",
                                         help="Epochs of every run (default: the recipe's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=(
        "Images per optimizer step of every run (default: the recipe's).")),
    limit: Optional[int] = typer.Option(None, help="At most N images per split (quick runs)."),
    data: Optional[str] = typer.Option(None, "--data", help="As `cnnbench train --data`."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps."),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", "-m", help=MODEL_ARG_HELP),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help=(
        "KEY=VALUE fixed for every run (repeatable).")),
    parallel: int = typer.Option(1, "--parallel", "-p", help=(
        "Runs at once, each in its own process: one per GPU on CUDA; on the CPU each gets "
        "cores/N threads unless `threads` is set. Output in DIR/logs/.")),
    folder: Optional[str] = typer.Option(None, "--dir", help=(
        "The sweep's folder. Default: runs/sweep-MODEL-DIGEST, DIGEST naming the plan "
        "(model, recipe file and its content, fixed keys, grid, seeds), so the same command "
        "finds the same folder. A folder holding the same sweep is continued; one holding "
        "another sweep is refused.")),
    resume: Optional[str] = typer.Option(None, "--resume", help=(
        "Continue the sweep in this folder, as its sweep.yaml says.")),
    search: str = typer.Option("grid", "--search", help=(
        "grid (every setting of --grid), or an Optuna search over --space: tpe (Bayesian, "
        "Optuna's TPESampler) or random; NAME:KEY=VALUE,... sets the sampler's options by "
        "Optuna's names, e.g. tpe:n_startup_trials=4.")),
    space: Optional[List[str]] = typer.Option(None, "--space", help=(
        "With --search: KEY=LOW..HIGH, KEY=log:LOW..HIGH, KEY=int:LOW..HIGH or "
        "KEY=V1,V2,... (repeatable), e.g. lr=log:1e-4..1e-1.")),
    trials: Optional[int] = typer.Option(None, "--trials", help=(
        "With --search: trials in all (over every worker and every run of the command; "
        "give more to extend the study).")),
    pruner: str = typer.Option("median", "--pruner", help=(
        "With --search: median (Optuna's MedianPruner on each epoch's validation value; "
        "4 trials run whole first), halving (SuccessiveHalvingPruner), hyperband "
        "(HyperbandPruner) or none; NAME:KEY=VALUE,... sets the pruner's options by Optuna's "
        "names, e.g. halving:min_resource=1,reduction_factor=3.")),
    storage: Optional[str] = typer.Option(None, "--storage", help=(
        "With --search: the Optuna storage (default: the journal file DIR/optuna.journal), "
        "e.g. sqlite:///study.db, postgresql://..., or journal:PATH on a shared file system.")),
    launcher: str = typer.Option("local", "--launcher", help=(
        "Where the runs go: local (this machine; --parallel processes) or slurm (a job array "
        "through submitit; --parallel tasks at once).")),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", help=(
        "With --launcher slurm and a grid: each run one training over N nodes (a job of N "
        "tasks, as `cnnbench train --launcher slurm --nnodes N`).")),
    nproc: Optional[int] = typer.Option(None, "--nproc", help=(
        "With --nnodes: processes per node (default 1; one GPU each on CUDA).")),
    slurm: Optional[str] = typer.Option(None, "--slurm", help=(
        "With --launcher slurm: submitit's SlurmExecutor parameters, "
        "e.g. partition=gpu,gpus_per_node=1,time=60 (minutes).")),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only a line per run."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON at the end."),
    yes: bool = typer.Option(False, "--yes", help=(
        "Start a sweep of more than 100 runs (without it, such a sweep stops before any).")),
) -> None:
    """Train every setting of a grid for each seed, one run folder each; then a table.
    Or, with `--search tpe|random`, `--trials` runs chosen by Optuna over `--space`.

    All the runs are checked before the first starts. The default folder,
    runs/sweep-MODEL-DIGEST, is named after the plan: running the same command again (or
    `--resume DIR`) continues that sweep: finished runs are skipped untouched, interrupted ones
    resume from their last checkpoint, the rest start. Changing the model, recipe, a fixed key,
    the grid or the seeds makes another plan, hence another folder. For a search the plan is
    the space, sampler, pruner, storage and seed instead of the grid (not `--trials`): the
    same command continues the study (a trial left running resumes), a larger `--trials`
    extends it. Examples:

    * `cnnbench sweep lenet --grid lr=0.003,0.01 --seeds 0,1 --limit 2000 --epochs 1`

    * `cnnbench sweep resnet18 --grid lr=0.05,0.1 --grid batch_size=128,256 --parallel 2`

    * `cnnbench sweep --file sweep.yaml --dir runs/my-sweep`

    * `cnnbench sweep --resume runs/sweep-lenet-3f2a9c1e`

    * `cnnbench sweep lenet --search tpe --trials 16 --space lr=log:1e-4..1e-1
      --space weight_decay=0,5e-4,5e-3 --epochs 4 --parallel 2`

    * `cnnbench sweep lenet --grid lr=0.003,0.01 --launcher slurm
      --slurm partition=gpu,gpus_per_node=1,time=60 --parallel 8`
    """
    from cnnbench import render
    from cnnbench import sweep as sweeps
    from cnnbench.launchers import get_launcher

    if resume and (model or grid or seeds or file or config or folder):
        raise CnnbenchError("--resume takes the sweep from its folder's sweep.yaml; give no "
                            "model, --grid, --seeds, --file, --config or --dir")
    searching = search != "grid"
    if not searching and (space or trials is not None or storage):
        raise CnnbenchError("--space, --trials and --storage go with --search tpe or random")
    if searching and resume:
        raise CnnbenchError("a search continues with the same command (or --dir DIR), "
                            "not --resume")
    if nproc is not None and nnodes is None:
        raise CnnbenchError("--nproc goes with --launcher slurm --nnodes N in a sweep")
    if nproc is not None and nproc < 1:
        raise CnnbenchError(f"--nproc must be >= 1, not {nproc}")
    if nnodes is not None and searching:
        raise CnnbenchError("--nnodes makes each run of a grid a multi-node job; a search's "
                            "workers train on one node each")
    fixed = _overrides(set_, model_arg, epochs=epochs, batch_size=batch_size, limit=limit,
                       data=data, device=device)
    where = get_launcher(launcher, parallel, slurm, nnodes)  # Slurm reachable, before any folder
    reporter = None if quiet else render.TrainReporter(quiet=True, console=render.err)
    if searching:
        try:
            from cnnbench import search as searches
        except ModuleNotFoundError as exc:
            raise CnnbenchError(f"--search needs {exc.name}: pip install "
                                f"'cnnbench[sweep]'") from None

        what = sweeps.spec(model, config, fixed, sweeps.parse_grid(grid),
                           sweeps.parse_seeds(seeds), file)
        table = searches.run_search(what, searches.parse_space(space), search, trials,
                                    pruner, storage, folder, where, say=render.err.print,
                                    reporter=reporter)
        render.print_json(table) if as_json else render.search_table(table)
        return
    if resume:
        what = sweeps.spec(file=resume, fixed=fixed)
    else:
        what = sweeps.spec(model, config, fixed, sweeps.parse_grid(grid),
                           sweeps.parse_seeds(seeds), file)
    sweeps.check_size(what, yes)  # counted before any run is resolved
    table = sweeps.run_sweep(what, resume or folder, resume=bool(resume), parallel=parallel,
                             say=render.err.print, reporter=reporter, launcher=where,
                             nproc=1 if nproc is None else nproc)
    render.print_json(table) if as_json else render.sweep_table(table)



# --- eval and predict (issue 17) ---

CHECKPOINT_HELP = "best (the monitor's choice) or last (the last epoch's)."


@app.command("eval")
def eval_(
    run: str = typer.Argument(..., help="A run folder (runs/MODEL-TIME) or a checkpoint file."),
    checkpoint: str = typer.Option("best", "--checkpoint", help=CHECKPOINT_HELP),
    data: Optional[str] = typer.Option(None, "--data", help="Other data (as `train --data`); "
                                       "default: the run's."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N test images "
                                        "(default: the run's limit)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps "
                                         "(default: the run's)."),
    tta: bool = typer.Option(False, "--tta", help="Average the class probabilities of each "
                             "image and its mirror image (classification, segmentation)."),
    ema: bool = typer.Option(False, "--ema", help="The checkpoint's model EMA instead of the "
                             "model (runs trained with ema)."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the pictures "
                                      "(default: RUN/eval)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Test metrics of a run's checkpoint, per-class table, confusion matrix and pictures.

    Pictures (PNG): the confusion matrix, the top losses (classification), predictions
    against the truth (the other tasks). Examples:
    `cnnbench eval runs/lenet-20260101-120000`, `cnnbench eval RUN --checkpoint last --tta`,
    `cnnbench eval RUN --json --out pictures/`.
    """
    from cnnbench import render
    from cnnbench.evaluate import evaluate

    result = evaluate(run, checkpoint, data=data, limit=limit, device=device, tta=tta, out=out,
                      ema=ema)
    render.print_json(result) if as_json else render.eval_report(result)


@app.command()
def predict(
    run: str = typer.Argument(..., help="A run folder (runs/MODEL-TIME)."),
    images: List[str] = typer.Argument(..., metavar="FOLDER|FILE...", help=(
        "Image files (PNG, JPEG, anything Pillow reads) or folders of them (recursively).")),
    checkpoint: str = typer.Option("best", "--checkpoint", help=CHECKPOINT_HELP),
    top: int = typer.Option(3, "--top", min=1, help="Classes (or boxes) kept per image."),
    csv: Optional[str] = typer.Option(None, "--csv", help=(
        "Write one row per file to FILE.csv (path, size, top classes and scores, boxes or mask "
        "shares) as the batches go, and print a summary instead of every file.")),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1,
                                   help="Files read and predicted at a time."),
    out: Optional[str] = typer.Option(None, "--out", help="Write each image with its "
                                      "prediction drawn to this folder."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or mps "
                                         "(default: the run's)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Class and score (or boxes, or mask shares) per image file, from a run's checkpoint.

    Each file is read as the training data were (grey or colour, the model's input size, the
    task's normalisation), `--batch-size` files at a time. Examples:
    `cnnbench predict runs/lenet-20260101-120000 shoe.png`,
    `cnnbench predict RUN a.png b.jpg --top 5 --out drawn/`,
    `cnnbench predict RUN photos/ --csv predictions.csv --batch-size 256`.
    """
    from cnnbench import render
    from cnnbench.predict import predict_csv, predict_stream

    if csv is None:
        about, rows = predict_stream(run, images, checkpoint, top=top, out=out, device=device,
                                     batch_size=batch_size)
        render.print_json(list(rows)) if as_json else render.predictions_lines(rows)
        return
    with render.progress_bar("predict", quiet=as_json) as progress:
        result = predict_csv(run, images, csv, checkpoint, top=top, out=out, device=device,
                             batch_size=batch_size, progress=progress)
    render.print_json(result) if as_json else render.predict_csv_line(result)


# --- export (issue 26) ---

@app.command()
def export(
    run: str = typer.Argument(..., help="A run folder (runs/MODEL-TIME)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (onnxruntime, any ONNX "
                            "runtime) or torchscript (torch.jit.load)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help=CHECKPOINT_HELP),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="The file to write (default: "
                                      "RUN/export/best.onnx or RUN/export/best.torchscript.pt)."),
    input_dtype: str = typer.Option("uint8", "--input-dtype", help="What the file takes: uint8 "
                                    "pixels 0-255, or float32 in [0, 1]."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Export a run's checkpoint to ONNX or TorchScript, normalisation inside, and check it.

    The file takes images `[N, C, H, W]` at the run's input size (any batch size N), scales and
    normalises them as training did, and returns the task's output (detection: the boxes decoded
    for every anchor and the class scores, no NMS). Class names, input and outputs are in its
    metadata. It is then loaded back (onnxruntime's CPU provider, torch.jit) and compared with
    the eager model on the run's own test images: the largest difference is printed.
    Examples: `cnnbench export runs/lenet-20260101-120000`,
    `cnnbench export RUN --format torchscript --checkpoint last --out lenet.pt`.
    """
    from cnnbench import render
    from cnnbench.export import export as export_run

    result = export_run(run, fmt, checkpoint, out=out, input_dtype=input_dtype)
    render.print_json(result) if as_json else render.export_lines(result)


# --- the built-in scenes as files (issue 24) ---

@app.command("export-scenes")
def export_scenes(
    out: str = typer.Argument(..., help="The folder to write coco/ and masks/ in."),
    fmt: Optional[List[str]] = typer.Option(
        None, "--format", "-f", help="coco (images + a COCO JSON per split) or masks (PNG "
        "images + mask PNGs + classes.txt); repeatable (default: both)."),
    scenes: int = typer.Option(10000, "--scenes", help="Training scenes (the scenes key)."),
    test_scenes: int = typer.Option(2000, "--test-scenes", help="Test scenes (test_scenes)."),
    size: int = typer.Option(96, "--scene-size", help="Canvas side in pixels (scene_size)."),
    images: str = typer.Option("jpeg", "--images", help="The COCO export's image files: jpeg "
                               "or png."),
    quality: int = typer.Option(95, "--quality", help="JPEG quality, 1-100."),
    data: Optional[str] = typer.Option(None, "--data", help="Fashion-MNIST's folder (default: "
                                       "the installed files)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write the built-in Fashion-MNIST scenes as your own data would be: JPEG + COCO JSON,
    PNG images + masks.

    `OUT/coco/train.json` and `test.json` (COCO's instances layout, images under `train/` and
    `test/`) and `OUT/masks/{train,test}/{images,masks}/` with `classes.txt`: train from them
    with `--data coco:OUT/coco/train.json` (detection, single-object, multi-label) or
    `--data masks:OUT/masks` (segmentation). With the same `scenes` and a `val_size` of at most
    a fifth of them, they give the same train / val / test images as `--data scenes`.
    Example: `cnnbench export-scenes scenes-files --scenes 3000 --test-scenes 1000`.
    """
    from cnnbench import render
    from cnnbench.data.scenes_export import FORMATS, export

    result = export(out, data, scenes_count=scenes, test_scenes=test_scenes, size=size,
                    formats=tuple(fmt or FORMATS), image_format=images, quality=quality)
    render.print_json(result) if as_json else render.exported_scenes_lines(result)


# --- bench (issue 4) ---

@app.command()
def bench(
    models: List[str] = typer.Argument(..., metavar="MODEL", help=(
        MODEL_HELP + " One or more; shell wildcards match several (quote them): 'lenet*', "
        "'torchvision:resnet1*'. Or `deformconv` alone for the deformable convolution "
        "implementations side by side. Or one FILE.onnx / FILE.pt that `cnnbench export` "
        "wrote.")),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", "-b",
                                    help="Batch sizes, comma-separated."),
    input_size: Optional[str] = typer.Option(None, "--input-size", "-i", help=INPUT_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("fp32", "--precision",
                                  help="fp32, or bf16/fp16 autocast (AMP)."),
    channels_last: bool = typer.Option(False, "--channels-last",
                                       help="Model and input in channels-last memory format."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model first."),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", "-m", help=MODEL_ARG_HELP),
    train_: bool = typer.Option(True, "--train/--no-train", help=(
        "Also time a training step (forward, backward, optimizer step).")),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help=(
        f"{', '.join(OPTIMIZERS)}: the training step's optimizer (default: the model's "
        "recipe's, experiments/MODEL.yaml, else sgd).")),
    detail: bool = typer.Option(False, "--detail", help=(
        "Split the training step into forward, backward and optimizer step.")),
    sweep: Optional[str] = typer.Option(
        None, "--sweep", help="Show how the cost grows: batch or size (deformconv: also shape)."),
    shape: str = typer.Option("8,64,56,56,3", "--shape",
                              help="deformconv only: N,C,H,W[,K] of the layer (C in and out)."),
    min_run_time: float = typer.Option(0.2, "--min-run-time",
                                       help="Seconds of timed runs per figure (after warm-up)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=(
        "CPU threads (default: 1 on a machine with 4 cores or fewer, else PyTorch's).")),
    plot: Optional[str] = typer.Option(None, "--plot", help="Draw the figures to FILE.png."),
    csv: Optional[str] = typer.Option(None, "--csv", help="Also write the rows to FILE.csv."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Optional[str] = typer.Option(None, "--json-file", help=(
        "Also write the JSON to FILE (with or without --json).")),
) -> None:
    """Speed figures: inference and training step per batch size, memory, FLOP/s.

    An exported file (`cnnbench export`: FILE.onnx, FILE.pt) is timed in its runtime
    (onnxruntime's CPU provider, torch.jit) beside the run's model in eager PyTorch (and
    torch.compile with `--compile`), with each one's speed relative to eager.

    Medians and IQRs from torch.utils.benchmark; `--json`/`--csv` use timm's column names
    (infer_samples_per_sec, infer_step_time, train_samples_per_sec, param_count, gmacs, ...).
    `deformconv` compares ours, torchvision's, the notes' deformable convolution and a plain
    conv at `--shape` (default 8,64,56,56,3: 3x3, padding 1, modulated), with the largest
    difference from torchvision's output and gradients.

    Several models (or a wildcard) give one table, and JSON as a list of the per-model
    objects. A batch that runs out of memory is retried at half the size (timm's retry).

    Examples: `cnnbench bench lenet`, `cnnbench bench resnet18 -b 1,16 --no-train`,
    `cnnbench bench lenet resnet18 'torchvision:resnet1*' --detail`,
    `cnnbench bench torchvision:resnet50 --device cuda --precision bf16 --channels-last`,
    `cnnbench bench vgg11 --sweep size --plot vgg.png`, `cnnbench bench lenet --csv lenet.csv`,
    `cnnbench bench deformconv`, `cnnbench bench deformconv --shape 4,32,28,28 --json`,
    `cnnbench bench deformconv --sweep shape --plot dcn.png`,
    `cnnbench bench runs/lenet-20260101-120000/export/best.onnx -b 1,64 --compile`.
    """
    import os

    # Before torch loads OpenMP: its default spin-waiting makes every parallel region wait for
    # a descheduled thread on a busy machine. Set OMP_WAIT_POLICY=active to measure that.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    import torch

    from cnnbench import bench as benchmarks
    from cnnbench import render

    for path, option in ((csv, "--csv"), (plot, "--plot"), (json_file, "--json-file")):
        if path:
            check_file(path, option)
    if threads is not None:
        if threads < 1:
            raise CnnbenchError("--threads must be >= 1")
        torch.set_num_threads(threads)
    op = next((m for m in models if m in benchmarks.OP_BENCHES), None)
    if op is not None and len(models) > 1:
        raise CnnbenchError(f"{op} runs alone: `cnnbench bench {op}`")
    exported = next((m for m in models if benchmarks.is_exported_file(m)), None)
    if exported is not None:
        if len(models) > 1:
            raise CnnbenchError(f"an exported file is timed alone: `cnnbench bench {exported}`")
        if sweep or plot or device not in ("auto", "cpu") or precision != "fp32":
            raise CnnbenchError("an exported file is timed on the CPU in fp32 per --batch-sizes "
                                "(no --sweep, --plot, --device or --precision)")
        result = benchmarks.bench_exported(
            exported, batch_sizes=benchmarks.parse_int_list(batch_sizes, "--batch-sizes"),
            min_run_time=min_run_time, threads=threads, compile=compile_)
        show, rows = render.exported_bench_table, result["rows"]
    elif op is not None:
        op_bench = benchmarks.OP_BENCHES[op]
        result = op_bench.run(benchmarks.parse_shape(shape), device=device, precision=precision,
                              min_run_time=min_run_time, sweep=sweep)
        show, rows = getattr(render, op_bench.table), result["rows"]
    else:
        from cnnbench.inputs import parse_model_args

        results = benchmarks.bench_models(
            models, batch_sizes=benchmarks.parse_int_list(batch_sizes, "--batch-sizes"),
            input_size=input_size, device=device, precision=precision,
            channels_last=channels_last, compile=compile_, model_args=parse_model_args(model_arg),
            min_run_time=min_run_time, train=train_, sweep=sweep, threads=threads,
            optimizer=optimizer, detail=detail)
        one = len(models) == 1 and not benchmarks.is_wildcard(models[0])
        result = results[0] if one else results
        show, rows = render.bench_table, [r for res in results for r in res["rows"]]
    if csv:
        benchmarks.write_csv(rows, csv)
    if plot:
        benchmarks.plot_sweep(result, plot)
    if json_file:
        benchmarks.write_json(result, json_file)
    render.print_json(result) if as_json else show(result)


# --- receptive-field (issue 5) ---

@app.command("receptive-field")
def receptive_field(
    model: str = typer.Argument(..., help=MODEL_HELP),
    input_size: Optional[str] = typer.Option(None, "--input-size", "-i", help=INPUT_HELP),
    layer: Optional[str] = typer.Option(None, "--layer", "-l",
                                        help="Only this layer (qualified module name)."),
    model_arg: Optional[List[str]] = typer.Option(None, "--model-arg", "-m", help=MODEL_ARG_HELP),
    verify: bool = typer.Option(False, "--verify", help=(
        "Check every field against the input gradient of one unit of a linearised copy.")),
    grid: bool = typer.Option(False, "--grid", help=(
        "Show which input region each grid cell of each feature map sees (detection heads).")),
    erf: Optional[str] = typer.Option(None, "--erf", help=(
        "Write the effective receptive field's heat map with the theoretical box to this PNG.")),
    effective: bool = typer.Option(False, "--effective", help=(
        "Measure the effective receptive field (implied by --erf).")),
    samples: int = typer.Option(32, "--samples", "-n", help="Inputs to average the ERF over."),
    data: str = typer.Option("auto", "--data", help=(
        "ERF inputs: fashion-mnist, random, or auto (Fashion-MNIST if present).")),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help=(
        "Trained weights for the ERF (a state dict, or the trainer's checkpoint).")),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Receptive field, stride and start of every layer, on the model's real graph.

    Examples: `cnnbench receptive-field resnet18`,
    `cnnbench receptive-field torchvision:resnet50 --layer layer4`,
    `cnnbench receptive-field googlenet -i 64 --verify`,
    `cnnbench receptive-field ssd --grid`,
    `cnnbench receptive-field resnet18 --erf erf.png --checkpoint runs/x/best.pt`,
    `cnnbench receptive-field unet -m width=16 --json`.
    """
    from cnnbench import render
    from cnnbench import plots, rf
    from cnnbench.inputs import parse_input_size, parse_model_args
    from cnnbench.models import get_model_info

    if erf:
        check_file(erf, "--erf")
    options = parse_model_args(model_arg)
    size = parse_input_size(input_size, get_model_info(model), options)
    if grid:
        result = rf.grid_view(model, size, model_args=options)
        render.print_json(result) if as_json else render.grid_table(result)
        return
    result = rf.receptive_fields(model, size, model_args=options, layer=layer)
    checks = (rf.verify(model, size, model_args=options, layers=[layer] if layer else None)
              if verify else None)
    measured = None
    if effective or erf:
        measured = rf.effective_field(model, size, model_args=options, layer=layer,
                                      samples=samples, checkpoint=checkpoint, data=data)
        if erf:
            plots.save_erf_png(measured, erf)
    if as_json:
        if checks is not None:
            result["verify"] = checks
        if measured is not None:
            result["effective"] = {k: v for k, v in measured.items() if k != "heat"}
        render.print_json(result)
        return
    render.receptive_field_table(result, checks)
    if measured is not None:
        render.effective_field_lines(measured)
        if erf:
            render.out.print(f"Heat map written to {erf}")


# Click's base class of usage errors (an unknown option, a bad or missing value), which typer
# re-exports only through its subclass BadParameter.
UsageError = typer.BadParameter.__mro__[1]


def repeated_option(args: list[str]) -> str | None:
    """The first option of one value given twice in ``args`` (Click would keep the last
    silently): ``--seed 0 --seed 1``, ``--compile --no-compile``."""
    command = getattr(typer.main.get_command(app), "commands", {}).get(
        next((a for a in args if not a.startswith("-")), None))
    options = {o: p for p in getattr(command, "params", ()) if p.param_type_name == "option"
               for o in (*p.opts, *p.secondary_opts)}
    seen, rest = {}, iter(args)
    for arg in rest:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        param = options.get(name)
        if param is None:
            continue
        if not param.multiple and param.name in seen:
            first = seen[param.name]
            return f"{name} given twice" if first == name else f"{first} and {name} both given"
        seen[param.name] = name
        if not param.is_flag and "=" not in arg:
            next(rest, None)  # its value
    return None


# A path that cannot be used as given (a dangling or looping link, too long a name, a file
# where a folder belongs): one line naming it. Full disks and the like are the write guard's.
PATH_ERRORS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENOENT,
               errno.EACCES, errno.EPERM}


def main() -> None:
    try:
        twice = repeated_option(sys.argv[1:])
        if twice:
            raise CnnbenchError(f"{twice}: an option takes one value, give it once")
        code = app(prog_name="cnnbench", standalone_mode=False)  # usage errors: one line
    except UsageError as exc:
        message = exc.format_message().strip()  # blank: the help was shown (no arguments)
        if message:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            sys.stderr.write(f"error: {message}{where}\n")
        sys.exit(2)
    except CnnbenchError as exc:
        report(str(exc))  # one line, also from several processes (files.report)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # a run stopped after its checkpoint (Ctrl-C), or a bug
        from cnnbench.training.interrupt import Interrupted

        if isinstance(exc, Interrupted):
            if os.environ.get("RANK", "0") == "0":
                sys.stderr.write(f"{exc}\n")
            sys.exit(exc.exit_code)
        if os.environ.get("CNNBENCH_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.errno in PATH_ERRORS and exc.filename:
            report(f"cannot use {exc.filename}: {exc.strerror}")  # a path the user gave
            sys.exit(2)
        if isinstance(exc, MemoryError):  # a size no check could foresee on this machine
            report("out of memory: ask for less (a smaller batch size, input size or --limit)")
            sys.exit(2)
        report(unforeseen(exc))  # a bug: one line, its traceback saved for the report
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
