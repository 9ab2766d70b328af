"""One module per model family; each registers its names with ``cnnbench.registry``.

Shared building blocks live in ``_blocks.py`` (a leading underscore: not a family).
"""
