"""The kinds of problem the trainer knows, one module each: the one task list.

``TASKS`` maps a task name (the ``task`` that ``cnnbench.registry`` gives each model) to the class
that trains it, as ``module:Class``, imported only when a run needs it (a classification run does
not pay for the detection code). ``feature-extraction`` models have no trainer task.

To add a task: a module here with a :class:`cnnbench.tasks.base.Task` subclass, and one line.
"""

TASKS: dict[str, str | None] = {
    "classification": "cnnbench.tasks.classification:Classification",
    "segmentation": "cnnbench.tasks.segmentation:Segmentation",
    "detection": "cnnbench.tasks.detection:Detection",
    "single-object": "cnnbench.tasks.single_object:SingleObject",
    "multi-label": "cnnbench.tasks.multi_label:MultiLabel",
    "feature-extraction": None,
}
