"""Tissue detection on a low-resolution thumbnail."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import color, morphology

__all__ = ["tissue_mask"]


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
    Small specks are removed and holes filled.

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
    saturation = color.rgb2hsv(image)[..., 1]
    luminance = color.rgb2gray(image)
    mask = (ndimage.uniform_filter(saturation, 3) > min_saturation) | (
        ndimage.uniform_filter(luminance, 3) < max_luminance
    )
    mask = ndimage.binary_closing(mask, structure=morphology.disk(2))
    mask = ndimage.binary_fill_holes(mask)
    min_pixels = max(1, int(min_area_um2 / (mpp * mpp)))
    return morphology.remove_small_objects(mask, max_size=min_pixels - 1)
