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

import os
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("nucflow")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

#: OpenMP settings nucflow gives its process (and so the Ray workers a local Ray starts from it)
#: unless they are set: OpenMP reads them once, when torch loads it, hence here. With the default
#: wait policy torch's idle OpenMP threads spin, which costs most when another process holds a
#: core: the bundled model on batches of 2 tiles of 576 px with 2 threads (issue 13) took 0.028-
#: 0.042 s wall and 0.039-0.054 CPU s per batch beside one busy process, 0.019 and 0.019 with
#: PASSIVE; on the quiet machine the same wall (0.013-0.015 s) and 0.021-0.023 against
#: 0.026-0.029 CPU s. nucflow's CPU model actors use one thread each; this serves the in-process
#: model of ``evaluate``/``validate`` and training with several threads.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
for _key, _value in OPENMP_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

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
