"""The stain gate: a model's probability kept only on pixels with a nuclear stain."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from skimage import io as skio

from nucflow.pipeline import load_segment_config
from nucflow.pipeline.image import (
    find_tissue,
    fit_params,
    method_spec,
    postprocess_profile,
    segment_image,
    work_grid,
)
from nucflow.postprocess import PostprocessConfig, load_stain_profile
from nucflow.slide.reader import array_slide
from nucflow.stain import HED_FROM_RGB, MIN_TRANSMISSION, stain_gate, stain_od


def _od(rgb: tuple[int, int, int]) -> np.ndarray:
    """Hematoxylin, eosin, DAB optical density of one pixel, by hand: -log10 of each channel's
    transmission times Ruifrok and Johnston's matrix, clipped at 0."""
    transmission = np.maximum(np.asarray(rgb, float) / 255.0, MIN_TRANSMISSION)
    return np.maximum(-np.log10(transmission) @ HED_FROM_RGB, 0.0)


def test_the_gate_drops_faint_brown_pixels_only() -> None:
    blue, brown, dark, pale, white = (60, 70, 160), (140, 90, 40), (70, 40, 20), (215, 190, 170), (250, 250, 250)
    colours = [blue, brown, dark, pale, white]
    rgb = np.array([colours], np.uint8)
    h, _, d = np.stack([_od(c) for c in colours], axis=1)
    hematoxylin, dab = stain_od(rgb)
    np.testing.assert_allclose(hematoxylin[0], h, atol=1e-9)
    np.testing.assert_allclose(dab[0], d, atol=1e-9)
    assert h[0] > d[0] and d[1] > h[1] and d[2] > h[2] and d[3] > h[3]  # one blue pixel, three brown
    prob = np.array([[0.9, 0.8, 0.95, 0.6, 0.1]], np.float32)
    # the model's nucleus pixels (>= 0.5) are the first four: the reference is their median density
    reference = np.median((h + d)[:4])
    assert (h + d)[3] < 0.5 * reference < (h + d)[1]
    assert stain_gate(rgb, prob, factor=0.5, threshold=0.5).tolist() == [[True, True, True, False, True]]
    # a factor putting the cut just above the brown pixel's density drops it too; blue always stays
    factor = (h + d)[1] / reference + 1e-9
    assert stain_gate(rgb, prob, factor=factor, threshold=0.5).tolist() == [[True, False, True, False, True]]
    assert h[4] >= d[4]  # white is no more DAB than hematoxylin: never dropped (its probability is low anyway)
    assert stain_gate(rgb, prob, factor=100.0, threshold=0.5).tolist() == [[True, False, False, False, True]]
    # no nucleus pixel: no reference, nothing dropped
    assert stain_gate(rgb, prob, factor=100.0, threshold=0.99).all()


def test_a_profile_refuses_a_negative_gate() -> None:
    with pytest.raises(ValueError, match="stain_gate"):
        PostprocessConfig(stain_gate=-0.1)


def test_segment_image_gates_the_model_map_and_not_the_baselines(shared_data: Path) -> None:
    """What ``segment`` does (the gate applied to each tile's core as it is predicted) equals the
    ungated map gated tile core by tile core afterwards, which is how ``benchmarks/quality.py``
    sweeps the gate on its cached maps (its own function, checked here)."""
    from benchmarks.quality import gated as quality_gated

    rgb = skio.imread(shared_data / "ihc/deepliif/images/Lung1.png")[..., :3]
    config = replace(load_segment_config(), stain_profile="ki67", inference=replace(
        load_segment_config().inference, tile_size=320))  # several tiles on the 512 px image
    spec = method_spec(config)
    base = postprocess_profile(config)
    plain = segment_image(rgb, mpp=0.25, spec=spec, config=config, profile=replace(base, stain_gate=0.0))
    gated = segment_image(rgb, mpp=0.25, spec=spec, config=config, profile=replace(base, stain_gate=1.2))
    thumb, _, tissue = find_tissue(array_slide(rgb, mpp=0.25), config.tissue)
    grid = work_grid(plain.probability.shape, spec, config, tissue)
    assert len(grid.tiles) > 1
    expected = plain.probability.copy()
    for t in grid.tiles:
        core = (slice(t.row, t.row + t.rows), slice(t.col, t.col + t.cols))
        keep = stain_gate(plain.rgb[core], plain.probability[core], factor=1.2, threshold=base.threshold)
        expected[core] = np.where(keep, plain.probability[core], 0.0)
    np.testing.assert_array_equal(gated.probability, expected)
    # the gate did something: it removed some of the model's foreground and kept most of it
    foreground = plain.probability >= 0.5
    dropped = foreground & (gated.probability == 0)
    assert 0 < dropped.sum() < (foreground & (gated.probability > 0)).sum()
    # quality.py's gating of the cached map is the same
    image = {"prob": plain.probability, "work": plain.rgb, "rgb": rgb, "image_mpp": 0.25, "spec": spec}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("benchmarks.quality.load_segment_config", lambda: config)
        np.testing.assert_array_equal(quality_gated(image, replace(base, stain_gate=1.2)), expected)
    assert fit_params(spec, thumb, tissue, replace(base, stain_gate=0.0)) == {}
    assert fit_params(spec, thumb, tissue, replace(base, stain_gate=1.2)) == {"stain_gate": [1.2, base.threshold]}

    baseline = method_spec(replace(config, method="threshold"))
    assert set(fit_params(baseline, thumb, tissue, replace(base, stain_gate=1.2))) == {"threshold"}
    assert load_stain_profile("her2").stain_gate == 0.0  # membranous DAB: no gate
