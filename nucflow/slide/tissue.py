"""Tissue detection on a low-resolution thumbnail."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import color, morphology

__all__ = ["MAX_SPECK_FRACTION", "hsv_saturation", "tissue_mask"]

#: A speck is never larger than this share of the image: on a tile-sized image (a 512 px
#: DeepLIIF tile is 0.016 mm², under the default 0.02 mm² speck area) the whole image
#: would otherwise be dropped as a speck.
MAX_SPECK_FRACTION = 0.05


def tissue_mask(
    rgb: np.ndarray,
    *,
    mpp: float = 8.0,
    min_saturation: float = 0.07,
    max_luminance: float = 0.86,
    min_area_um2: float = 20_000.0,
) -> np.ndarray:
    """Foreground tissue of a slide thumbnail.

    A pixel is tissue when it is coloured (HSV saturation above ``min_saturation``) or dark
    (luminance below ``max_luminance``): glass is bright and grey, stained tissue is neither.
    Specks smaller than ``min_area_um2`` (but never more than :data:`MAX_SPECK_FRACTION`
    of the image, so a tile that is all tissue is kept whatever its size) are removed and
    holes filled.

    Parameters
    ----------
    rgb : np.ndarray
        (rows, cols, 3) uint8 thumbnail.
    mpp : float
        Resolution of the thumbnail in µm/px, to express ``min_area_um2`` in pixels.

    Returns
    -------
    np.ndarray
        (rows, cols) bool.
    """
    image = rgb.astype(np.float32) / 255.0
    saturation = hsv_saturation(rgb)
    luminance = color.rgb2gray(image)
    mask = (ndimage.uniform_filter(saturation, 3) > min_saturation) | (
        ndimage.uniform_filter(luminance, 3) < max_luminance
    )
    mask = ndimage.binary_closing(mask, structure=morphology.disk(2))
    mask = ndimage.binary_fill_holes(mask)
    min_pixels = max(1, min(int(min_area_um2 / (mpp * mpp)), int(MAX_SPECK_FRACTION * mask.size)))
    return morphology.remove_small_objects(mask, max_size=min_pixels - 1)


#: uint8 value -> float32 value / 255, as ``rgb.astype(np.float32) / 255.0`` gives it.
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255.0)


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of a uint8 RGB image: the values of ``skimage.color.rgb2hsv(rgb / 255)[..., 1]``
    in float32 (max minus min over max, 0 where they are equal), without the hue it also computes
    (a quarter of the time)."""
    red, green, blue = (np.ascontiguousarray(rgb[..., i]) for i in range(3))
    value = _UNIT[np.maximum(np.maximum(red, green), blue)]
    delta = value - _UNIT[np.minimum(np.minimum(red, green), blue)]
    with np.errstate(invalid="ignore", divide="ignore"):
        saturation = delta / value
    saturation[delta == 0.0] = 0.0
    return saturation
