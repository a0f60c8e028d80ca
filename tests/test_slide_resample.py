"""The slide reader's resampling: one axis at a time, the same values as scipy's map_coordinates."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from nucflow.slide.reader import _linear
from nucflow.slide.synthetic import demo_ihc_image


def test_linear_resampling_equals_map_coordinates_on_real_pixels() -> None:
    """Bit for bit (float32) on scikit-image's IHC image, at the 2x upsampling of a 0.5 µm/px slide
    read at 0.25 µm/px and at an odd scale with random offsets."""
    src = demo_ihc_image().astype(np.float32)[:300, :300]
    rng = np.random.default_rng(0)
    for scale in (0.5, 0.5, 0.37, 1.3):
        offset = 3 + rng.random(2)
        n = int((src.shape[0] - 8) / scale) - 2
        rr = (np.arange(n) + 0.5) * scale - 0.5 + offset[0]
        cc = (np.arange(n) + 0.5) * scale - 0.5 + offset[1]
        grid = np.meshgrid(rr, cc, indexing="ij")
        expected = np.stack([ndimage.map_coordinates(src[..., c], grid, order=1, mode="nearest") for c in range(3)],
                            axis=-1)
        assert np.array_equal(_linear(src, rr, cc), expected)
