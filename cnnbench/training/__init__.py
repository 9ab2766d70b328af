"""The shared trainer: one loop for every model and task, everything else a callback.

    loop.py        Trainer (step, epoch, evaluate, fit, state), Callback, the cancel exceptions
    callbacks.py   run folder, metrics.jsonl, TensorBoard, NaN guard, checkpoints, EMA, console
    build.py       build_trainer(config): a trainer from a resolved configuration
    optimizers.py  the optimizer table and parameter groups (a model's lr_multipliers)
    schedules.py   the learning-rate schedule table (torch.optim.lr_scheduler classes)
    transfer.py    init_from, layer groups, lr_mult, freeze_epochs
    runs.py        run folders: new, claim, lock, check, read and reconcile metrics
    interrupt.py   Ctrl-C/SIGTERM checkpoints, out of memory or disk as one line
    distributed.py --nproc: processes, DistributedDataParallel, sharded data
    lr_find.py     the learning-rate range test on a trainer
    compiling.py, profiles.py, weight_init.py, checks.py, rng.py, syncs.py: their keys and helpers

This layer sits below the recipe (``cnnbench/recipe.py`` gathers the keys these modules declare)
and the commands (``cnnbench/train.py`` resolves a recipe and fits a trainer); it imports
neither. The tables import nothing heavy, so that the command line can list their names in its
help; import the modules themselves (``from cnnbench.training.build import build_trainer``).
"""
