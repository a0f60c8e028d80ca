"""Package names imported on first use (PEP 562), so importing a package stays light.

A package whose ``__init__`` only re-exports names of its modules lists them here instead of
importing them: ``from nucflow.slide import slide_stem`` then loads the module that defines
``slide_stem`` only, not every module of the package (and no scikit-image, torch or Dask that
another module needs). A rerun with nothing to do decides so without loading those
(``nucflow segment`` over a finished cohort, see :mod:`nucflow.pipeline.outputs`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: each name of ``exports`` (name -> module defining it)
    is imported from its module on first access and then kept on the package."""

    def __getattr__(name: str) -> Any:
        source = exports.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(source), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
