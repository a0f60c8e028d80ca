"""nucflow: unsupervised nuclei segmentation of IHC whole-slide images at cohort scale.

Everything the command line does is a library call:

- :func:`segment` (``nucflow segment``): slides in, per-slide nucleus tables out;
- :func:`train` (``nucflow train``): the adversarial training on Ray Train, with export;
- :func:`evaluate` (``nucflow evaluate``): the paper's metrics and baselines;
- :func:`open_slide`, :func:`load_model`: the reader and the model loader they use.

Cluster job submission is :class:`nucflow.cluster.JobClient` (``nucflow submit``).
The names are imported on first use, so ``import nucflow`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("nucflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

_PUBLIC = {
    "segment": "nucflow.pipeline",
    "train": "nucflow.training",
    "evaluate": "nucflow.evaluation",
    "open_slide": "nucflow.slide",
    "load_model": "nucflow.models",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nucflow' has no attribute {name!r}")
