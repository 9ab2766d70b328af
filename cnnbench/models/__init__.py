"""One module per model family; each registers its names with ``cnnbench.registry`` when this
package is imported (every module here is, so a new family is one new file), which makes this
the place where models are looked up: ``get_model_info``, ``get_model``, ``list_models``,
``model_rows``.
"""

import importlib
import pkgutil

from cnnbench.registry import (ModelInfo, get_model, get_model_info, list_models,  # noqa: F401
                               model_rows)

for _family in pkgutil.iter_modules(__path__):
    if not _family.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_family.name}")
