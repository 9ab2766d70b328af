"""The kinds of problem the trainer knows, one module each.

The one task list, name -> ``module:Class``, is ``cnnbench.registry.TASKS`` (each registered model
carries its task). To add a task: a module here with a :class:`cnnbench.tasks.base.Task`
subclass, and one line there.
"""
