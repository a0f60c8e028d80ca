"""The paper's classical baselines: Otsu on luminance and on deconvolved optical density."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data, io
from skimage.color import rgb2hed

from nucflow.errors import InputError
from nucflow.inference.baselines import (
    baseline_probability,
    baseline_signal,
    fit_threshold,
    stain_optical_density,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Pink tissue with purple disks (the nuclei) on a white margin, and the disks' mask."""
    rgb = np.full((64, 96, 3), 245, np.uint8)
    rgb[4:60, 4:92] = (215, 170, 200)
    rr, cc = np.mgrid[:64, :96]
    nuclei = np.zeros((64, 96), bool)
    for r, c in [(15, 15), (15, 50), (40, 30), (45, 75), (20, 80)]:
        nuclei |= (rr - r) ** 2 + (cc - c) ** 2 < 36
    rgb[nuclei] = (70, 50, 130)
    return rgb, nuclei


@pytest.mark.parametrize("method", ["threshold", "deconvolution"])
def test_finds_the_nuclei(blobs, method):
    rgb, nuclei = blobs
    tissue = np.zeros(nuclei.shape, bool)
    tissue[4:60, 4:92] = True
    threshold = fit_threshold(rgb, method=method, sigma=0, mask=tissue)
    prob = baseline_probability(rgb, method=method, threshold=threshold, sigma=0)
    assert prob.dtype == np.float32 and set(np.unique(prob)) == {0.0, 1.0}
    np.testing.assert_array_equal(prob > 0, nuclei)


@pytest.mark.parametrize("method", ["threshold", "deconvolution"])
def test_tiles_with_one_threshold_equal_the_whole_image(blobs, method):
    rgb, _ = blobs
    threshold = fit_threshold(rgb, method=method, sigma=0)
    whole = baseline_probability(rgb, method=method, threshold=threshold, sigma=0)
    tiles = np.zeros_like(whole)
    for r in range(0, 64, 40):
        for c in range(0, 96, 40):
            tile = rgb[r : r + 40, c : c + 40]
            tiles[r : r + 40, c : c + 40] = baseline_probability(
                tile, method=method, threshold=threshold, sigma=0
            )
    np.testing.assert_array_equal(tiles, whole)


def test_optical_density_matches_skimage():
    rgb = data.immunohistochemistry()
    # skimage scales optical density by log(1e-6): its HED values are OD10 / 6
    rgb[0, 0] = 0  # black clips at the same intensity
    np.testing.assert_allclose(stain_optical_density(rgb), 6 * rgb2hed(rgb), atol=1e-4)
    white = np.full((2, 2, 3), 255, np.uint8)
    assert stain_optical_density(white).max() == 0.0


@pytest.mark.parametrize("method", ["threshold", "deconvolution"])
def test_real_ihc_foreground_share(shared_data, method):
    # DeepLIIF truth: nuclei cover 42% of Bladder1 and 17% of Lung1
    for name, low, high in [("Bladder1", 0.2, 0.5), ("Lung1", 0.08, 0.3)]:
        rgb = io.imread(shared_data / "ihc/deepliif/images" / f"{name}.png")[..., :3]
        prob = baseline_probability(rgb, method=method, sigma=1.0)
        assert low < prob.mean() < high, name


def test_signal_is_darker_is_larger(blobs):
    rgb, nuclei = blobs
    signal = baseline_signal(rgb, method="threshold", sigma=0)
    assert signal[nuclei].min() > signal[~nuclei].max()


def test_errors(blobs):
    rgb, _ = blobs
    with pytest.raises(InputError, match="unknown baseline method 'otsu'"):
        baseline_probability(rgb, method="otsu")
    with pytest.raises(InputError, match=r"RGB uint8 image.*\(64, 96\) uint8"):
        baseline_probability(rgb[..., 0], method="threshold")
    with pytest.raises(InputError, match="pixels of one value"):
        fit_threshold(np.full((8, 8, 3), 200, np.uint8), method="threshold")
    with pytest.raises(InputError, match="0 pixels"):
        fit_threshold(rgb, method="threshold", mask=np.zeros(rgb.shape[:2], bool))
