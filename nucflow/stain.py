"""Stain optical density by colour deconvolution: the one definition used by segment's nucleus
table, evaluate's positivity calls, the baselines and training.

Ruifrok and Johnston's hematoxylin / eosin / DAB vectors (scikit-image's ``hed_from_rgb``), on
base-10 optical density, with transmission floored at :data:`MIN_TRANSMISSION` as scikit-image's
``rgb2hed`` floors it, so the densities here are 6 times ``rgb2hed``'s (which divides the natural
log by ln 1e-6). Training's differentiable version (:func:`nucflow.training.rgb_to_hed`, in
``rgb2hed`` units on tensors) takes its matrix and floor from here. Whether a nucleus is
DAB-positive from these densities is :func:`nucflow.postprocess.dab_positive`.

A stain profile may replace the fixed vectors (``stain_vectors``): by vectors it gives, or by
vectors estimated per slide with Macenko's method (:func:`estimate_macenko`) on the tissue of
the slide's thumbnail (:func:`resolve_stain_vectors`, falling back to the fixed vectors, with
the reason logged, when the estimate cannot be trusted). Only the nucleus measurements and the
positivity call use them; segmentation (the baselines' signal, training) keeps the fixed ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

from nucflow.config import InvalidValue, check_fields, one_of, setting

__all__ = [
    "FIXED",
    "HED_FROM_RGB",
    "MIN_TRANSMISSION",
    "StainEstimateError",
    "StainVectors",
    "estimate_macenko",
    "resolve_stain_vectors",
    "stain_gate",
    "stain_od",
    "stain_optical_density",
]

log = logging.getLogger(__name__)

#: Optical density -> hematoxylin, eosin, DAB (rows: R, G, B channels).
HED_FROM_RGB = np.asarray(hed_from_rgb, np.float64)
#: Transmission is floored here before the logarithm (a black pixel's density stays finite).
MIN_TRANSMISSION = 1e-6

# Base-10 optical density of each 8-bit intensity; then each channel's byte -> its share of each
# stain: _OD_TO_STAIN[channel, stain] is a 256-entry table, so a stain's density is
# table[0][red] + table[1][green] + table[2][blue].
_OD_OF_BYTE = -np.log10(np.maximum(np.arange(256) / 255.0, MIN_TRANSMISSION))


def _tables(matrix: np.ndarray) -> np.ndarray:
    return np.stack([np.outer(_OD_OF_BYTE, matrix[c]).T for c in range(3)])


_OD_TO_STAIN = _tables(HED_FROM_RGB)


@lru_cache(maxsize=64)
def _pair_tables(tables_key: bytes) -> np.ndarray:
    """Each stain's red + green shares summed per (red, green) pair: (3 stains, 65,536), read
    at ``red << 8 | green``. Adding the blue share to it is the same float64 sum, in the same
    order, as the three per-channel lookups: bit-identical densities from two lookups, not three."""
    tables = np.frombuffer(tables_key, np.float64).reshape(3, 3, 256)
    return np.stack([(tables[0, s][:, None] + tables[1, s][None, :]).ravel() for s in range(3)])


@dataclass(frozen=True)
class StainVectors:
    """Hematoxylin and DAB optical-density vectors (R, G, B), as a stain profile's
    ``stain_vectors: {hematoxylin: [r, g, b], dab: [r, g, b]}`` gives them or as estimated
    for one slide. Stored at unit length; the third vector of the unmixing is their cross
    product (scikit-image's ``hdx`` residual), so densities stay in the fixed vectors' units.

    ``method``: "fixed" (Ruifrok and Johnston's, unmixed with their eosin vector as
    :data:`HED_FROM_RGB`), "given" (by the profile) or "macenko" (estimated); ``note`` says why
    an estimate fell back to the fixed vectors.
    """

    hematoxylin: tuple[float, ...]
    dab: tuple[float, ...]
    method: str = setting("given", one_of("fixed", "given", "macenko"))
    note: str = ""

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("hematoxylin", "dab"):
            vector = np.asarray(getattr(self, name), np.float64)
            norm = float(np.linalg.norm(vector)) if vector.shape == (3,) else 0.0
            if vector.shape != (3,) or (vector < 0).any() or not norm > 0:
                raise InvalidValue(name, list(getattr(self, name)),
                                   "be an optical-density vector [R, G, B]: three numbers >= 0, not all 0")
            object.__setattr__(self, name, tuple(round(float(v), 6) for v in vector / norm))
        residual = np.cross(self.hematoxylin, self.dab)
        if np.linalg.norm(residual) < math.sin(math.radians(1.0)):
            raise InvalidValue("dab", list(self.dab), "point another way than hematoxylin (they are "
                               "within 1 degree of each other, so the two stains cannot be told apart)")
        if self.method == "fixed" and max(self.angles_to(_FIXED_UNIT)) > 0.01:
            raise InvalidValue("method", self.method, "be 'given' for vectors other than the fixed ones")

    @property
    def matrix(self) -> np.ndarray:
        """Optical density (R, G, B) -> hematoxylin, other, DAB: ``od @ matrix``."""
        if self.method == "fixed":
            return HED_FROM_RGB
        residual = np.cross(self.hematoxylin, self.dab)
        return np.linalg.inv(np.stack([self.hematoxylin, residual / np.linalg.norm(residual), self.dab]))

    def angles_to(self, other: StainVectors | tuple[Any, Any]) -> tuple[float, float]:
        """Degrees between these hematoxylin and DAB vectors and ``other``'s."""
        hematoxylin, dab = (other.hematoxylin, other.dab) if isinstance(other, StainVectors) else other
        return (_angle(self.hematoxylin, hematoxylin), _angle(self.dab, dab))

    def summary(self) -> dict[str, Any]:
        """JSON-ready record for a slide's summary: method, vectors, fallback note."""
        out: dict[str, Any] = {"method": self.method, "hematoxylin": list(self.hematoxylin), "dab": list(self.dab)}
        if self.note:
            out["note"] = self.note
        return out


def _angle(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


_FIXED_UNIT = (rgb_from_hed[0], rgb_from_hed[2])
#: Ruifrok and Johnston's vectors (scikit-image's ``rgb_from_hed`` rows), the default.
FIXED = StainVectors(tuple(rgb_from_hed[0]), tuple(rgb_from_hed[2]), method="fixed")


@lru_cache(maxsize=64)
def _tables_of(matrix_key: bytes) -> np.ndarray:
    return _tables(np.frombuffer(matrix_key, np.float64).reshape(3, 3))


def _stain_tables(vectors: StainVectors | str | None) -> np.ndarray:
    if vectors is None or vectors == "fixed" or (isinstance(vectors, StainVectors) and vectors.method == "fixed"):
        return _OD_TO_STAIN
    if not isinstance(vectors, StainVectors):
        raise ValueError(f"stain vectors {vectors!r} are not resolved: estimate them for the image first "
                         "(nucflow.stain.resolve_stain_vectors)")
    return _tables_of(np.ascontiguousarray(vectors.matrix, np.float64).tobytes())


def _densities(rgb: np.ndarray, stains: tuple[int, ...], tables: np.ndarray = _OD_TO_STAIN) -> list[np.ndarray]:
    """Optical density of each of ``stains`` (clipped at 0), float64, shape ``rgb.shape[:-1]``.

    One uint16 index ``red << 8 | green`` into :func:`_pair_tables` and the blue byte, shared by
    the stains (uint16 indices: numpy's take is several times slower on strided uint8 ones)."""
    rgb = np.asarray(rgb)
    flat = rgb.reshape(-1, 3)
    pair = flat[:, 0].astype(np.uint16) << 8
    pair |= flat[:, 1]
    blue = flat[:, 2].astype(np.uint16)
    pairs = _pair_tables(np.ascontiguousarray(tables, np.float64).tobytes())
    out = []
    for stain in stains:
        od = np.take(pairs[stain], pair)
        od += np.take(tables[2, stain], blue)
        out.append(np.maximum(od, 0.0, out=od).reshape(rgb.shape[:-1]))
    return out


def stain_od(rgb: np.ndarray, vectors: StainVectors | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB optical density (base 10) of uint8 RGB ``(..., 3)``.

    Returns two float64 arrays of shape ``(...)``, >= 0 (white is 0). With the fixed vectors
    (``vectors`` None, "fixed" or :data:`FIXED`): ``skimage.color.rgb2hed`` in base-10 units,
    i.e. 6 times its values; with other :class:`StainVectors`, unmixed with theirs.
    """
    hematoxylin, dab = _densities(rgb, (0, 2), _stain_tables(vectors))
    return hematoxylin, dab


def stain_optical_density(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities (base 10) of uint8 RGB ``(..., 3)``:
    float32 ``(..., 3)``, clipped at 0 (the same densities as :func:`stain_od`)."""
    return np.stack(_densities(rgb, (0, 1, 2)), axis=-1).astype(np.float32)


# --------------------------------------------------------------------------- stain gate


def stain_gate(rgb: np.ndarray, prob: np.ndarray, *, factor: float, threshold: float) -> np.ndarray:
    """Pixels of a model's probability map ``prob`` (rows, cols) that keep their probability,
    given the uint8 RGB ``rgb`` (rows, cols, 3) it was predicted from; bool (rows, cols).

    The reference is the median hematoxylin + DAB optical density (fixed vectors) of the pixels
    the model calls nucleus (``prob >= threshold``). A pixel more DAB than hematoxylin whose
    density is under ``factor`` times that reference is dropped (light-brown cytoplasm and
    stroma, red blood cell outlines); every other pixel keeps its probability, so pale
    hematoxylin nuclei are never gated. With no nucleus pixel there is no reference and
    nothing is dropped. Applied to each tile's core (:func:`nucflow.inference.tiled.predict_tiles`)
    when the stain profile sets ``stain_gate`` (see :class:`nucflow.postprocess.PostprocessConfig`).
    """
    nucleus = prob >= threshold
    if not nucleus.any():
        return np.ones(prob.shape, bool)
    hematoxylin, dab = stain_od(rgb)
    keep = hematoxylin >= dab
    density = np.add(hematoxylin, dab, out=hematoxylin)
    reference = float(np.median(density[nucleus], overwrite_input=True))  # a gathered copy
    keep |= density >= factor * reference
    return keep


# --------------------------------------------------------------------------- Macenko

#: Pixels count as stained when every channel's optical density (base 10) exceeds this
#: (Macenko et al.'s beta, 0.15 in natural-log units).
MACENKO_BETA = 0.15 / math.log(10)
#: The extreme stain directions are these percentiles of the pixels' angles (and 100 minus).
MACENKO_ALPHA = 1.0
#: Fewer stained pixels than this and the estimate falls back to the fixed vectors.
MACENKO_MIN_PIXELS = 2000
#: The two extreme directions must be at least this many degrees apart (else: one stain only).
MACENKO_MIN_SPREAD = 5.0
#: Each estimated vector must lie within this many degrees of its fixed counterpart.
MACENKO_MAX_ANGLE = 30.0


class StainEstimateError(ValueError):
    """The stain vectors of an image cannot be estimated; the message says why."""


def estimate_macenko(
    rgb: np.ndarray, mask: np.ndarray | None = None, *, beta: float = MACENKO_BETA, alpha: float = MACENKO_ALPHA,
    min_pixels: int = MACENKO_MIN_PIXELS, max_angle: float = MACENKO_MAX_ANGLE,
) -> StainVectors:
    """Hematoxylin and DAB vectors of an image by Macenko et al.'s method (ISBI 2009).

    The optical densities of the stained pixels (``mask``, every channel above ``beta``) span
    a plane through the origin, that of their two largest singular vectors; each pixel's
    direction in that plane is an angle, and the stains are the directions at the ``alpha``
    and ``100 - alpha`` percentiles of the angles (robust extremes). Which is hematoxylin and
    which DAB is the pairing closer to the fixed vectors.

    Raises :class:`StainEstimateError` naming the reason when there are fewer than
    ``min_pixels`` stained pixels, the pixels lie along one direction (one stain), or a vector
    is not physical (a negative density) or lies more than ``max_angle`` degrees from its
    fixed counterpart.
    """
    pixels = np.asarray(rgb).reshape(-1, 3)
    if mask is not None:
        pixels = pixels[np.asarray(mask, bool).ravel()]
    od = _OD_OF_BYTE[pixels]
    od = od[(od > beta).all(axis=1)]
    if len(od) < min_pixels:
        raise StainEstimateError(f"{len(od)} stained pixels (optical density above {beta:.3f} in every channel), "
                                 f"fewer than {min_pixels}")
    values, vectors = np.linalg.eigh(od.T @ od)  # the right singular vectors of od, ascending
    first, second = vectors[:, 2], vectors[:, 1]
    first = first if first.sum() >= 0 else -first
    angles = np.arctan2(od @ second, od @ first)
    low, high = np.percentile(angles, [alpha, 100.0 - alpha])
    if math.degrees(high - low) < MACENKO_MIN_SPREAD or values[1] <= values[2] * 1e-9:
        raise StainEstimateError(f"the stained pixels lie along one direction ({math.degrees(high - low):.1f} degrees "
                                 f"between the {alpha:g}th and {100 - alpha:g}th percentiles): one stain only")
    ends = [first * math.cos(a) + second * math.sin(a) for a in (low, high)]
    ends = [v if v.sum() >= 0 else -v for v in ends]
    if (sum(_angle(e, f) for e, f in zip(ends, (FIXED.hematoxylin, FIXED.dab), strict=True))
            > sum(_angle(e, f) for e, f in zip(ends[::-1], (FIXED.hematoxylin, FIXED.dab), strict=True))):
        ends = ends[::-1]
    for name, vector in zip(("hematoxylin", "DAB"), ends, strict=True):
        if (vector < -0.02).any():
            raise StainEstimateError(f"the estimated {name} vector {np.round(vector, 3).tolist()} "
                                     "has a negative density")
    estimate = StainVectors(tuple(np.clip(ends[0], 0, None)), tuple(np.clip(ends[1], 0, None)), method="macenko")
    for name, angle in zip(("hematoxylin", "DAB"), estimate.angles_to(FIXED), strict=True):
        if angle > max_angle:
            raise StainEstimateError(f"the estimated {name} vector is {angle:.1f} degrees from the fixed one "
                                     f"(more than {max_angle:g})")
    return estimate


def resolve_stain_vectors(
    setting: StainVectors | str, rgb: np.ndarray, mask: np.ndarray | None = None, *, name: str = "image"
) -> StainVectors:
    """The vectors a stain profile's ``stain_vectors`` setting gives for one image.

    "fixed" -> :data:`FIXED`; given :class:`StainVectors` -> themselves; "macenko" ->
    :func:`estimate_macenko` on ``rgb`` (a slide's thumbnail) within ``mask`` (its tissue),
    or :data:`FIXED` with the reason in its ``note`` (and a logged warning naming ``name``)
    when the estimate fails.
    """
    if isinstance(setting, StainVectors):
        return setting
    if setting == "fixed":
        return FIXED
    if setting != "macenko":
        raise ValueError(f"unknown stain_vectors setting {setting!r}")
    try:
        estimate = estimate_macenko(rgb, mask)
    except StainEstimateError as exc:
        log.warning("%s: fixed stain vectors used, Macenko estimate rejected: %s", name, exc)
        return StainVectors(FIXED.hematoxylin, FIXED.dab, method="fixed", note=f"Macenko estimate rejected: {exc}")
    hematoxylin, dab = estimate.angles_to(FIXED)
    log.info("%s: Macenko stain vectors hematoxylin %s, DAB %s (%.1f and %.1f degrees from the fixed ones)",
             name, list(estimate.hematoxylin), list(estimate.dab), hematoxylin, dab)
    return estimate
