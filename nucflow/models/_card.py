"""The model card: everything needed to rebuild and correctly apply a trained segmentator."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import PurePath
from typing import Any

from nucflow.config import check_fields
from nucflow.errors import ConfigError, ModelError
from nucflow.models._networks import UNetSpec

__all__ = [
    "CARD_FORMAT", "CARD_VERSION", "HEADS", "ModelCard", "NORMALISATIONS", "STAIN_PROFILES", "data_summary",
    "without_paths",
]

CARD_FORMAT = "nucflow-model-card"
CARD_VERSION = 1
#: "minus_one_one": RGB in [0, 1] is mapped to [-1, 1] before the UNet (pix2pix convention).
NORMALISATIONS = ("minus_one_one",)
#: The stain profile a model is post-processed with. In training, "her2" makes R and D_R work on
#: the hematoxylin channel only (membranous stains); "ki67" on RGB, or on hematoxylin too with
#: ``loss.cycle_target: hematoxylin`` (the bundled model since session s30).
STAIN_PROFILES = ("ki67", "her2")
#: S's output channels per head. "mask": one, the nucleus mask. "interior": two, the nucleus mask
#: and its interior (each nucleus eroded, also where two touch); the probability map is their mean,
#: so the map is ~0.5 on nucleus edges and ~1 in interiors, and watershed markers are the interiors.
HEADS = {"mask": 1, "interior": 2}


@dataclass(frozen=True)
class ModelCard(UNetSpec):
    """Description of a trained segmentator S, stored as JSON beside its weights.

    A :class:`~nucflow.models.UNetSpec` (its UNet hyper-parameters ``ngf``, ``depth``, ``norm``,
    ``dropout``, ``dropout_blocks``, ``max_mult``, and ``input_multiple`` and ``widths``), plus:

    Attributes
    ----------
    architecture : str
        "unet" (pix2pix UNet, see :class:`nucflow.models.UNet`).
    r : float
        Sharpening factor multiplying the logits before the sigmoid.
    mpp : float
        Working resolution in µm/px; images are resampled to it before the model.
    tile_size : int
        Side in px (at ``mpp``) of the tiles the model was trained on and should see.
    normalisation : str
        How RGB in [0, 1] is normalised before the UNet (see ``NORMALISATIONS``).
    stain_profile : str
        "ki67" or "her2" (see ``STAIN_PROFILES``).
    training : Mapping
        Summary of the training run (data, config, command).
    steps : int
        Optimiser steps of the exported checkpoint.
    losses : Mapping
        Loss terms of the exported checkpoint.
    software_version : str
        nucflow version that wrote the card.
    model_id : str
        First 16 hex digits of the SHA-256 of the weights file.
    mask_shrink_um : float
        The model outlines every nucleus this many µm inside its edge (it was trained on
        masks shrunk so touching nuclei are apart); post-processing grows the labels back.
    head : str
        What S predicts (see ``HEADS``): "mask" or "interior" (mask and interior channels,
        whose mean is the probability map; post-processing takes markers from interiors).
    members : int
        How many S networks the weights hold: 1, or an ensemble of that many (the same
        architecture, trained with different seeds) whose probability maps are averaged
        (:func:`nucflow.models.ensemble_models` builds one; its ``training`` lists the members').
    """

    architecture: str = "unet"
    r: float = 60.0
    mpp: float = 0.5
    tile_size: int = 256
    normalisation: str = "minus_one_one"
    stain_profile: str = "ki67"
    training: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 0
    losses: Mapping[str, float] = field(default_factory=dict)
    software_version: str = ""
    model_id: str = ""
    mask_shrink_um: float = 0.0
    head: str = "mask"
    members: int = 1
    format: str = CARD_FORMAT
    format_version: int = CARD_VERSION

    @property
    def out_channels(self) -> int:
        """S's output channels (see ``HEADS``)."""
        return HEADS[self.head]

    def to_json(self) -> str:
        """The card as JSON (derived fields ``input_multiple`` and ``widths`` included)."""
        data = dataclasses.asdict(self)
        data["input_multiple"] = self.input_multiple
        data["widths"] = list(self.widths)
        return json.dumps(data, indent=2, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<card>") -> ModelCard:
        """Parse and validate a card; anything not understood is a :class:`ModelError`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card {source} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError(f"model card {source} must be a JSON object")
        _check_format(data, source)
        derived = {k: data.pop(k) for k in ("input_multiple", "widths") if k in data}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"model card {source} has unknown field {unknown[0]!r}")
        card = cls(**data)
        card.validate(source=source)
        if derived.get("input_multiple", card.input_multiple) != card.input_multiple:
            raise ModelError(f"model card {source}: input_multiple disagrees with depth")
        return card

    def validate(self, *, source: str = "<card>") -> None:
        """Raise :class:`ModelError` if a field holds a value this version cannot apply."""
        try:
            check_fields(self)  # the UNet's ranges (UNetSpec) and every field's type
        except ConfigError as exc:
            raise ModelError(f"model card {source}: {exc}") from None
        checks = [
            (self.architecture == "unet", f"architecture {self.architecture!r} (expected 'unet')"),
            (self.normalisation in NORMALISATIONS, f"normalisation {self.normalisation!r}"),
            (self.stain_profile in STAIN_PROFILES, f"stain_profile {self.stain_profile!r}"),
            (self.mpp > 0 and self.r > 0, f"mpp {self.mpp} / r {self.r}"),
            (0 <= self.mask_shrink_um < 5, f"mask_shrink_um {self.mask_shrink_um}"),
            (self.head in HEADS, f"head {self.head!r} (expected one of {', '.join(HEADS)})"),
            (self.members >= 1, f"members {self.members} (expected 1 or more)"),
            (self.tile_size % self.input_multiple == 0, f"tile_size {self.tile_size}"),
        ]
        for ok, what in checks:
            if not ok:
                raise ModelError(f"model card {source}: unsupported {what}")


#: A data summary lists the file names of a kind when there are at most this many.
SUMMARY_NAMES = 20


def data_summary(files: Mapping[str, Sequence[str | PathLike[str]]]) -> dict[str, dict[str, Any]]:
    """What a model was trained on, without machine paths: per kind (``slides``, ``tiles``,
    ``masks``), the number of files, the SHA-256 of their sorted file names (one per line), and
    the names themselves when there are at most :data:`SUMMARY_NAMES`."""
    summary: dict[str, dict[str, Any]] = {}
    for kind, paths in files.items():
        names = sorted(PurePath(p).name for p in paths)
        entry: dict[str, Any] = {"count": len(names),
                                 "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}
        if len(names) <= SUMMARY_NAMES:
            entry["names"] = names
        summary[kind] = entry
    return summary


def without_paths(value: Any) -> Any:
    """``value`` (a card's training record) with every machine path in its strings cut to its last
    component (``/work/runs/s0`` -> ``s0``, ``../data/OS-2-*.tif`` -> ``OS-2-*.tif``,
    ``s3://bucket/run`` -> ``run``), in mappings and lists too: a card records no path of the
    machine it was made on. Words that only contain a slash (``µm/px``) are left alone."""
    if isinstance(value, Mapping):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(v) for v in value]
    if isinstance(value, str):
        return _PATH_WORD.sub(lambda m: _last_part(m.group(0)), value)
    return value


# An absolute, home, ./ or ../ path, a Windows drive path or a URI, starting a word (or after = or a quote).
_PATH_WORD = re.compile(r"""(?<![^\s'"=])(?:~|\.{1,2}/|/|[A-Za-z]:\\|[A-Za-z][\w+.-]*://)[^\s'"]*""")


def _last_part(path: str) -> str:
    parts = [p for p in re.split(r"[/\\]", path) if p]
    return parts[-1] if parts else path


def _check_format(data: Mapping[str, Any], source: str) -> None:
    fmt, version = data.get("format"), data.get("format_version")
    if fmt != CARD_FORMAT:
        raise ModelError(
            f"model card {source} has format {fmt!r}, not {CARD_FORMAT!r}; not a nucflow model"
        )
    if version != CARD_VERSION:
        raise ModelError(
            f"model card {source} has format_version {version!r}; this nucflow reads "
            f"version {CARD_VERSION} only: upgrade nucflow or re-export the model"
        )
