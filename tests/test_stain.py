"""Stain vectors: the fixed default, vectors a profile gives, and Macenko's per-slide estimate."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hed, rgb_from_hdx, separate_stains

from nucflow.config import from_mapping
from nucflow.errors import ConfigError
from nucflow.postprocess import PostprocessConfig, load_stain_profile
from nucflow.postprocess._features import MapGeometry, region_measures, region_stats
from nucflow.stain import (
    FIXED,
    StainEstimateError,
    StainVectors,
    estimate_macenko,
    resolve_stain_vectors,
    stain_od,
)

# Known vectors ~10 degrees from the fixed ones, as real slides' estimates are (8-13 degrees).
HEMATOXYLIN = np.array([0.78, 0.55, 0.30])
DAB = np.array([0.40, 0.58, 0.71])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _synthetic(hematoxylin: np.ndarray, dab: np.ndarray, *, n: int = 40_000, dab_share: float = 0.3,
               seed: int = 0) -> np.ndarray:
    """An RGB image made by Beer-Lambert from known vectors: stain amounts drawn per pixel
    (some pixels hematoxylin only, some DAB only, some both), a white background quarter,
    and 8-bit rounding."""
    rng = np.random.default_rng(seed)
    has_h = rng.random(n) < 0.8
    has_d = rng.random(n) < dab_share
    c_h = rng.gamma(2.0, 0.25, n) * has_h
    c_d = rng.gamma(2.0, 0.3, n) * has_d
    c_h[: n // 4] = c_d[: n // 4] = 0.0  # background
    od = np.outer(c_h, _unit(hematoxylin)) + np.outer(c_d, _unit(dab))
    return np.clip(np.round(255.0 * 10.0 ** -od), 0, 255).astype(np.uint8).reshape(200, n // 200, 3)


def test_fixed_default_is_unchanged():
    """The shipped profiles keep the fixed vectors, and every way of naming them gives
    rgb2hed's densities (base 10) bit for bit."""
    for name in ("ki67", "her2"):
        assert load_stain_profile(name).stain_vectors == "fixed"
    assert PostprocessConfig().stain_vectors == "fixed"
    rgb = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    default = stain_od(rgb)
    for vectors in ("fixed", FIXED, resolve_stain_vectors("fixed", rgb)):
        for ours, theirs in zip(stain_od(rgb, vectors), default, strict=True):
            np.testing.assert_array_equal(ours, theirs)
    hed = 6 * rgb2hed(rgb)
    np.testing.assert_allclose(default[0], np.maximum(hed[..., 0], 0), atol=1e-6)
    np.testing.assert_allclose(default[1], np.maximum(hed[..., 2], 0), atol=1e-6)


def test_densities_are_the_three_channel_sums_bit_for_bit():
    """stain_od reads (red, green) pair tables and adds blue's share: the same float64 sums,
    in the same order, as the three per-channel lookups, for every (red, green) pair."""
    from nucflow.stain import _OD_OF_BYTE, stain_optical_density

    red, green = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    given = StainVectors(tuple(HEMATOXYLIN), tuple(DAB))
    for blue in (0, 1, 97, 254, 255):
        rgb = np.stack([red, green, np.full_like(red, blue)], axis=-1).astype(np.uint8)
        od = _OD_OF_BYTE[rgb]  # (256, 256, 3): each channel's base-10 density
        for vectors, matrix in ((None, FIXED.matrix), (given, given.matrix)):
            expected = [np.maximum(od[..., 0] * matrix[0, s] + od[..., 1] * matrix[1, s] + od[..., 2] * matrix[2, s], 0)
                        for s in range(3)]
            for ours, theirs in zip(stain_od(rgb, vectors), (expected[0], expected[2]), strict=True):
                np.testing.assert_array_equal(ours, theirs)
            if vectors is None:
                np.testing.assert_array_equal(stain_optical_density(rgb), np.stack(expected, -1).astype(np.float32))


def test_given_vectors_unmix_as_scikit_image_hdx():
    """Other vectors are unmixed with their cross product as third stain: scikit-image's
    H-DAB-residual deconvolution (unit rows) gives the same densities."""
    rgb = np.random.default_rng(2).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    rgb_from = np.array([_unit(rgb_from_hdx[0]), _unit(rgb_from_hdx[1]), _unit(rgb_from_hdx[2])])
    expected = 6 * separate_stains(rgb, np.linalg.inv(rgb_from))
    hematoxylin, dab = stain_od(rgb, StainVectors(tuple(rgb_from[0]), tuple(rgb_from[1])))
    np.testing.assert_allclose(hematoxylin, np.maximum(expected[..., 0], 0), atol=2e-4)
    np.testing.assert_allclose(dab, np.maximum(expected[..., 1], 0), atol=2e-4)


def test_given_vectors_recover_stain_amounts():
    """A pixel made from amounts (h, d) of the given vectors is unmixed back to (h, d)."""
    vectors = StainVectors(tuple(HEMATOXYLIN), tuple(DAB))
    od = 0.3 * _unit(HEMATOXYLIN) + 0.5 * _unit(DAB)
    rgb = np.round(255 * 10.0 ** -od).astype(np.uint8)[None]
    hematoxylin, dab = stain_od(rgb, vectors)
    assert hematoxylin[0] == pytest.approx(0.3, abs=0.01) and dab[0] == pytest.approx(0.5, abs=0.01)
    _, fixed_dab = stain_od(rgb)
    assert abs(fixed_dab[0] - 0.5) > 0.05  # the fixed vectors do not: the test could fail


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macenko_recovers_known_vectors(seed):
    image = _synthetic(HEMATOXYLIN, DAB, seed=seed)
    estimate = estimate_macenko(image)
    assert estimate.method == "macenko"
    h_angle, d_angle = estimate.angles_to((HEMATOXYLIN, DAB))
    assert h_angle < 1.0 and d_angle < 1.0
    assert min(estimate.angles_to(FIXED)) > 5.0  # far from the fixed ones: the estimate moved


def test_macenko_uses_the_mask_only():
    """Pixels outside the tissue mask (here a band of a third, eosin-like stain) are ignored."""
    image = _synthetic(HEMATOXYLIN, DAB)
    eosin = _synthetic(np.array([0.07, 0.99, 0.11]), np.array([0.07, 0.99, 0.11]) + 1e-3, seed=5)
    image[:60] = eosin[:60]
    mask = np.ones(image.shape[:2], bool)
    mask[:60] = False
    h_angle, d_angle = estimate_macenko(image, mask).angles_to((HEMATOXYLIN, DAB))
    assert h_angle < 1.0 and d_angle < 1.0
    unmasked = estimate_macenko(image, max_angle=90.0).angles_to((HEMATOXYLIN, DAB))
    assert max(unmasked) > 5.0


def test_macenko_falls_back_to_fixed_with_the_reason(caplog):
    white = np.full((100, 100, 3), 250, np.uint8)
    one_stain = _synthetic(HEMATOXYLIN, DAB, dab_share=0.0)
    # a "DAB" 60 degrees from the real one (an eosin-like red stain) fails the angle check
    far = _synthetic(HEMATOXYLIN, np.array([0.1, 0.95, 0.3]))
    cases = {"white": (white, "stained pixels"), "one": (one_stain, "one stain only"),
             "far": (far, "degrees from the fixed one")}
    for name, (image, reason) in cases.items():
        with pytest.raises(StainEstimateError, match=reason):
            estimate_macenko(image)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="nucflow.stain"):
            resolved = resolve_stain_vectors("macenko", image, name=f"slide-{name}")
        assert resolved.method == "fixed" and reason in resolved.note
        assert (resolved.hematoxylin, resolved.dab) == (FIXED.hematoxylin, FIXED.dab)
        assert f"slide-{name}" in caplog.text and reason in caplog.text
        for ours, theirs in zip(stain_od(white, resolved), stain_od(white), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_profile_setting_parses_and_refuses_bad_values(tmp_path: Path):
    text = Path("nucflow/configs/stains/ki67.yaml").read_text()
    path = tmp_path / "ki67-macenko.yaml"
    path.write_text(text + "stain_vectors: macenko\n")
    assert load_stain_profile(path).stain_vectors == "macenko"
    path.write_text(text + "stain_vectors:\n  hematoxylin: [0.78, 0.55, 0.30]\n  dab: [0.40, 0.58, 0.71]\n")
    given = load_stain_profile(path).stain_vectors
    assert isinstance(given, StainVectors) and given.method == "given"
    assert np.linalg.norm(given.hematoxylin) == pytest.approx(1.0, abs=1e-5)
    bad = {"vahadane": "stain_vectors must be 'fixed', 'macenko'",
           "{hematoxylin: [1, 0.5, -0.2], dab: [0.3, 0.6, 0.7]}": "stain_vectors.hematoxylin must be",
           "{hematoxylin: [0.6, 0.7, 0.3], dab: [0.6, 0.7, 0.3]}": "stain_vectors.dab must point another way",
           "{hematoxylin: [0.6, 0.7, 0.3], dab: [0.3, 0.6, 0.7], method: fixed}": "stain_vectors.method",
           "{haematoxylin: [0.6, 0.7, 0.3], dab: [0.3, 0.6, 0.7]}": "unknown config key 'haematoxylin'"}
    for value, message in bad.items():
        path.write_text(text + f"stain_vectors: {value}\n")
        with pytest.raises(ConfigError, match=message) as info:
            load_stain_profile(path)
        assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="not resolved"):
        stain_od(np.zeros((2, 3), np.uint8), "macenko")


def test_nucleus_measures_use_the_profiles_vectors():
    """The nucleus table's densities and positivity come from the vectors the profile holds
    (a slide's estimate once resolved), not always from the fixed ones."""
    image = _synthetic(HEMATOXYLIN, DAB)[:, :100]
    labels = np.zeros(image.shape[:2], np.int32)
    labels[10:30, 10:30], labels[50:80, 40:70] = 1, 2
    stats = region_stats(labels)
    prob = np.full(labels.shape, 200, np.uint8)
    vectors = estimate_macenko(_synthetic(HEMATOXYLIN, DAB))
    config = from_mapping(PostprocessConfig, {"stain_vectors": vectors})
    columns, _ = region_measures(labels, stats, np.array([1, 2]), prob, image, geometry=MapGeometry(mpp=0.5),
                                 origin=(0, 0), dab_threshold=0.18, dab_min_fraction=0.4,
                                 stain_vectors=config.stain_vectors)
    hematoxylin, dab = stain_od(image, vectors)
    for label in (1, 2):
        assert columns["dab_od"][label - 1] == pytest.approx(dab[labels == label].mean())
        assert columns["hematoxylin_od"][label - 1] == pytest.approx(hematoxylin[labels == label].mean())
    fixed, _ = region_measures(labels, stats, np.array([1, 2]), prob, image, geometry=MapGeometry(mpp=0.5),
                               origin=(0, 0), dab_threshold=0.18, dab_min_fraction=0.4)
    assert not np.allclose(fixed["dab_od"], columns["dab_od"], rtol=0.02)


def test_segment_image_estimates_the_tiles_vectors_for_its_calls(tmp_path: Path):
    """``evaluate`` (``segment_image``) estimates a macenko profile's vectors on the image's
    thumbnail tissue, as ``segment``'s finishing step does on a slide's, and calls with them."""
    from dataclasses import replace

    from skimage.io import imread

    from nucflow.pipeline import load_segment_config
    from nucflow.pipeline.image import method_spec, positive_calls, segment_image

    tile = Path("../shared/data/ihc/deepliif/images/Lung1.png")
    if not tile.is_file():
        pytest.skip(f"{tile} (shared data) is not here")
    rgb = imread(tile)[:256, :256, :3]  # a quarter: enough stained pixels, a few seconds
    profile_path = tmp_path / "ki67-macenko.yaml"
    profile_path.write_text(Path("nucflow/configs/stains/ki67.yaml").read_text() + "stain_vectors: macenko\n")
    config = replace(load_segment_config(), method="threshold", stain_profile=str(profile_path))
    result = segment_image(rgb, mpp=0.25, spec=method_spec(config), config=config)
    assert result.stain_vectors.method == "macenko"
    assert min(result.stain_vectors.angles_to(FIXED)) > 3.0
    profile = load_stain_profile(profile_path)
    calls = result.positive(profile)
    assert calls == positive_calls(result.rgb, result.labels, replace(profile, stain_vectors=result.stain_vectors))
    fixed = positive_calls(result.rgb, result.labels, load_stain_profile("ki67"))
    assert calls.keys() == fixed.keys() and len(calls) > 5


def test_slide_scores_record_the_vectors_used():
    """summary.json's scoring names the vectors a slide was measured with (and a fallback's reason)."""
    from dataclasses import replace

    from nucflow.scoring import ScoreAccumulator

    part = {"centroid_x_um": np.array([1.0, 2.0]), "centroid_y_um": np.array([1.0, 2.0]),
            "dab_intensity": np.array([0, 2], np.int8), "area_um2": np.array([30.0, 40.0]),
            "dab_od": np.array([0.1, 0.5])}
    estimate = estimate_macenko(_synthetic(HEMATOXYLIN, DAB))
    rejected = resolve_stain_vectors("macenko", np.full((10, 10, 3), 255, np.uint8))
    for vectors in (estimate, rejected):
        scores = ScoreAccumulator(replace(PostprocessConfig(), stain_vectors=vectors))
        scores.add(part)
        assert scores.summary(um_per_level0_px=1.0)["stain_vectors"] == vectors.summary()
    assert rejected.summary()["method"] == "fixed" and "stained pixels" in rejected.summary()["note"]
    unresolved = ScoreAccumulator(PostprocessConfig())
    unresolved.add(part)
    assert "stain_vectors" not in unresolved.summary(um_per_level0_px=1.0)
