"""Where a model's files are and what identifies them, without torch.

A model is a ``.safetensors`` weights file with its JSON card beside it (``x.safetensors`` and
``x.json``), or a folder holding ``model.safetensors`` and ``model.json``. Its ``model_id`` is
the hash of the weights file. Light on purpose: a rerun decides that nothing is left to do
from these (:mod:`nucflow.pipeline.outputs`) without loading torch or the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nucflow.errors import ModelError

__all__ = ["DEFAULT_MODEL_DIR", "default_model_path", "file_id", "model_files"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"


def file_id(path: Path) -> str:
    """A weights file's id: the first 16 hex digits of its SHA-256 (a card's ``model_id``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def model_files(path: Path, *, creating: bool = False) -> tuple[Path, Path]:
    """The weights file and card of the model at ``path`` (a ``.safetensors`` file or a folder;
    ``creating``: a path without a suffix is a folder to create)."""
    if path.is_dir() or (creating and path.suffix == ""):
        path.mkdir(parents=True, exist_ok=True)
        return path / "model.safetensors", path / "model.json"
    if path.suffix != ".safetensors":
        raise ModelError(f"model path {path} must be a .safetensors file or a folder")
    return path, path.with_suffix(".json")


def default_model_path() -> Path | None:
    """The bundled default model's weights file, or None when none ships."""
    weights = DEFAULT_MODEL_DIR / "model.safetensors"
    if weights.is_file() and weights.with_suffix(".json").is_file():
        return weights
    return None
