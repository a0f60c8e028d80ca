"""The stain gate: a model's probability kept only on pixels with a nuclear stain."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio
from skimage.filters import threshold_otsu

from nucflow.pipeline import load_segment_config
from nucflow.pipeline.image import find_tissue, fit_params, method_spec, postprocess_profile, segment_image
from nucflow.postprocess import PostprocessConfig, load_stain_profile
from nucflow.slide.reader import array_slide
from nucflow.stain import HED_FROM_RGB, MIN_TRANSMISSION, fit_stain_gate, stain_gate, stain_od


def _od(rgb: tuple[int, int, int]) -> np.ndarray:
    """Hematoxylin, eosin, DAB optical density of one pixel, by hand: -log10 of each channel's
    transmission times Ruifrok and Johnston's matrix, clipped at 0."""
    transmission = np.maximum(np.asarray(rgb, float) / 255.0, MIN_TRANSMISSION)
    return np.maximum(-np.log10(transmission) @ HED_FROM_RGB, 0.0)


def test_the_gate_keeps_a_pixel_from_its_cut_on() -> None:
    blue, brown, white = (60, 70, 160), (140, 90, 40), (250, 250, 250)
    rgb = np.array([[blue, brown, white]], np.uint8)
    h, _, d = np.stack([_od(c) for c in (blue, brown, white)], axis=1)
    hematoxylin, dab = stain_od(rgb)
    np.testing.assert_allclose(hematoxylin[0], h, atol=1e-9)
    np.testing.assert_allclose(dab[0], d, atol=1e-9)
    assert h[0] > h[1] and d[1] > d[0]  # the blue pixel is hematoxylin, the brown one DAB
    # each pixel passes on either stain; a cut just above its density drops it
    assert stain_gate(rgb, (h[0], np.inf)).tolist() == [[True, False, False]]
    assert stain_gate(rgb, (h[0] + 1e-9, np.inf)).tolist() == [[False, False, False]]
    assert stain_gate(rgb, (np.inf, d[1])).tolist() == [[False, True, False]]
    assert stain_gate(rgb, (h[0], d[1])).tolist() == [[True, True, False]]


def test_the_cuts_are_otsu_on_the_tissue_times_the_factor() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:30, 10:45] = True
    hematoxylin, dab = stain_od(rgb)
    cuts = fit_stain_gate(rgb, mask, factor=0.7)
    assert cuts is not None
    assert cuts == pytest.approx((0.7 * threshold_otsu(hematoxylin[mask]), 0.7 * threshold_otsu(dab[mask])))
    assert fit_stain_gate(rgb, None, factor=1.0) == pytest.approx(
        (threshold_otsu(hematoxylin), threshold_otsu(dab)))
    # one colour: no cut can be fitted, so no gate
    assert fit_stain_gate(np.full((8, 8, 3), 128, np.uint8), None, factor=0.7) is None


def test_a_profile_refuses_a_negative_gate() -> None:
    with pytest.raises(ValueError, match="stain_gate"):
        PostprocessConfig(stain_gate=-0.1)


def test_segment_image_gates_the_model_map_and_not_the_baselines(shared_data: Path) -> None:
    """What ``segment`` does (the gate's cuts fitted on the thumbnail, applied to each tile's
    window) equals the ungated map times the gate of the working-resolution RGB, which is how
    ``benchmarks/quality.py`` sweeps the gate on its cached maps."""
    rgb = skio.imread(shared_data / "ihc/deepliif/images/Lung1.png")[..., :3]
    config = replace(load_segment_config(), stain_profile="ki67")
    spec = method_spec(config)
    base = postprocess_profile(config)
    plain = segment_image(rgb, mpp=0.25, spec=spec, config=config, profile=replace(base, stain_gate=0.0))
    gated = segment_image(rgb, mpp=0.25, spec=spec, config=config, profile=replace(base, stain_gate=0.7))
    thumb, _, tissue = find_tissue(array_slide(rgb, mpp=0.25), config.tissue)
    params = fit_params(spec, thumb, tissue, replace(base, stain_gate=0.7))
    keep = stain_gate(plain.rgb, params["stain_gate"])
    np.testing.assert_array_equal(gated.probability, np.where(keep, plain.probability, 0.0))
    # the gate did something: it removed some of the model's foreground and kept most of it
    foreground = plain.probability >= 0.5
    assert 0 < (foreground & ~keep).sum() < (foreground & keep).sum()
    assert fit_params(spec, thumb, tissue, replace(base, stain_gate=0.0)) == {}

    baseline = replace(config, method="threshold")
    spec = method_spec(baseline)
    params = fit_params(spec, thumb, tissue, replace(base, stain_gate=0.7))
    assert set(params) == {"threshold"}
    assert load_stain_profile("her2").stain_gate == 0.0  # membranous DAB: no gate
