"""Slide names: a slide's file stem and a file-system-safe name for its output folder.

Light on purpose (no NumPy, no reader): a rerun names the output folders of a finished cohort
without loading the slide readers (:mod:`nucflow.pipeline.outputs`).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["safe_slide_name", "slide_stem"]


def slide_stem(path: str | Path) -> str:
    """A slide's file name without its format suffix (``.ome.tif`` counts as one)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def safe_slide_name(path: str | Path) -> str:
    """A file-system-safe name for a slide: its stem without odd characters.

    Not unique (``a.svs`` and ``a.tif``, or names differing only in dropped characters,
    share it); :func:`nucflow.pipeline.outputs.output_names` makes output folders unique.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", slide_stem(path)).strip("._")
    return cleaned or "slide"
