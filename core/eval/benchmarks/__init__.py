"""The benchmarks: one module per family, each registering its tasks (`core.eval.task.register`) when imported.

Every module in this folder is imported here, so adding a benchmark is one new file (and its test);
``TASKS`` is the registry, in run order, once this package is imported.
"""

import importlib
import pkgutil

from core.eval.task import TASKS, sort_tasks

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
sort_tasks()

__all__ = ["TASKS"]
