"""The shared trainer: one loop for every model and task, everything else a callback.

    loop.py        Trainer (step, epoch, evaluate, fit, state), Callback, the cancel exceptions
    callbacks.py   run folder, metrics.jsonl, TensorBoard, NaN guard, checkpoints, console
    build.py       build_trainer(config), train(), resume(): what `cnnbench train` calls
    optimizers.py  the optimizer table and parameter groups (a model's lr_multipliers)
    schedules.py   the learning-rate schedule table (torch.optim.lr_scheduler classes)
    transfer.py    init_from, torchvision weights from the cache, layer groups, freeze_epochs
    runs.py        run folders: new, claim, check, read_metrics, list_runs
    rng.py         seeds and every random state a checkpoint keeps

The tables import nothing heavy, so that the command line can list their names in its help;
import the modules themselves (``from cnnbench.training.build import train``).
"""
