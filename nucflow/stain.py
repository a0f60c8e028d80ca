"""Stain optical density by colour deconvolution: the one definition used by segment's nucleus
table, evaluate's positivity calls, the baselines and training.

Ruifrok and Johnston's hematoxylin / eosin / DAB vectors (scikit-image's ``hed_from_rgb``), on
base-10 optical density, with transmission floored at :data:`MIN_TRANSMISSION` as scikit-image's
``rgb2hed`` floors it, so the densities here are 6 times ``rgb2hed``'s (which divides the natural
log by ln 1e-6). Training's differentiable version (:func:`nucflow.training.rgb_to_hed`, in
``rgb2hed`` units on tensors) takes its matrix and floor from here. Whether a nucleus is
DAB-positive from these densities is :func:`nucflow.postprocess.dab_positive`.
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb

__all__ = ["HED_FROM_RGB", "MIN_TRANSMISSION", "stain_od", "stain_optical_density"]

#: Optical density -> hematoxylin, eosin, DAB (rows: R, G, B channels).
HED_FROM_RGB = np.asarray(hed_from_rgb, np.float64)
#: Transmission is floored here before the logarithm (a black pixel's density stays finite).
MIN_TRANSMISSION = 1e-6

# Base-10 optical density of each 8-bit intensity; then each channel's byte -> its share of each
# stain: _OD_TO_STAIN[channel, stain] is a 256-entry table, so unmixing is three lookups and two
# sums per stain.
_OD_OF_BYTE = -np.log10(np.maximum(np.arange(256) / 255.0, MIN_TRANSMISSION))
_OD_TO_STAIN = np.stack([np.outer(_OD_OF_BYTE, HED_FROM_RGB[c]).T for c in range(3)])


def _density(rgb: np.ndarray, stain: int) -> np.ndarray:
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    od = _OD_TO_STAIN[0, stain][red] + _OD_TO_STAIN[1, stain][green] + _OD_TO_STAIN[2, stain][blue]
    return np.maximum(od, 0.0, out=od)


def stain_od(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and DAB optical density (base 10) of uint8 RGB ``(..., 3)``.

    Returns two float64 arrays of shape ``(...)``, >= 0 (white is 0): ``skimage.color.rgb2hed``
    in base-10 units, i.e. 6 times its values.
    """
    return _density(rgb, 0), _density(rgb, 2)


def stain_optical_density(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities (base 10) of uint8 RGB ``(..., 3)``:
    float32 ``(..., 3)``, clipped at 0 (the same densities as :func:`stain_od`)."""
    return np.stack([_density(rgb, s) for s in range(3)], axis=-1).astype(np.float32)
