"""IHC scoring: intensity classes, H-score, labelling index and the Ki67 hot spot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nucflow.errors import ConfigError
from nucflow.postprocess import PostprocessConfig, load_stain_profile
from nucflow.scoring import (
    ScoreAccumulator,
    h_score,
    hot_spot,
    hot_spot_candidates,
    score_nuclei,
)


def test_intensity_classes_from_the_profile_thresholds() -> None:
    profile = PostprocessConfig(dab_threshold=0.2, dab_min_fraction=0.0, intensity_thresholds=(0.4, 0.6))
    dab = np.array([0.0, 0.19, 0.2, 0.39, 0.4, 0.59, 0.6, 2.0, np.nan])
    assert profile.intensity(dab, np.zeros_like(dab)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0]
    # the share rule still decides positivity: DAB 0.5 beside hematoxylin 1.0 is under 40%
    shared = PostprocessConfig(dab_threshold=0.2, dab_min_fraction=0.4)
    assert shared.intensity(np.array([0.5, 0.5]), np.array([1.0, 0.2])).tolist() == [0, 2]


def test_single_threshold_mode_has_positive_only_and_no_h_score() -> None:
    profile = PostprocessConfig(dab_threshold=0.2, dab_min_fraction=0.0, intensity_thresholds=())
    dab = np.array([0.1, 0.3, 0.9])
    intensity = profile.intensity(dab, np.zeros(3))
    assert intensity.tolist() == [0, 1, 1]
    scores = score_nuclei(np.zeros(3), np.zeros(3), intensity, profile)
    assert scores["h_score"] is None
    assert scores["intensity_counts"] == {"Negative": 1, "Positive": 2}
    assert scores["labelling_index_percent"] == pytest.approx(200 / 3, abs=1e-3)


@pytest.mark.parametrize("thresholds", [(0.6, 0.4), (0.1, 0.5), (0.4,), (0.4, 0.4), (0.3, 0.5, 0.7)])
def test_thresholds_out_of_order_are_a_clear_error(thresholds, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="intensity_thresholds must be two increasing"):
        PostprocessConfig(dab_threshold=0.18, intensity_thresholds=thresholds)
    path = tmp_path / "mine.yaml"
    path.write_text(f"dab_threshold: 0.18\nintensity_thresholds: {list(thresholds)}\n")
    with pytest.raises(ConfigError, match=r"intensity_thresholds.*got \["):
        load_stain_profile(path)


def test_shipped_profiles_grade_intensity() -> None:
    for name in ("ki67", "her2"):
        profile = load_stain_profile(name)
        assert len(profile.intensity_thresholds) == 2 and profile.hotspot_shape == "circle"
        assert profile.hotspot_area_mm2 == pytest.approx(0.2)


def test_h_score_by_hand() -> None:
    # 10 nuclei: 4 negative, 3 1+, 2 2+, 1 3+ -> 30% + 2 x 20% + 3 x 10% = 100
    intensity = np.array([0] * 4 + [1] * 3 + [2] * 2 + [3])
    assert h_score(intensity) == pytest.approx(100.0)
    assert h_score(np.full(5, 3)) == pytest.approx(300.0) and h_score(np.zeros(5, int)) == 0.0
    assert h_score(np.zeros(0, int)) is None


def _brute_force(x, y, positive, *, area_mm2, shape):
    """Every candidate centre, counted with plain distances (no tree)."""
    size = math.sqrt(area_mm2 * 1e6 / math.pi) if shape == "circle" else math.sqrt(area_mm2 * 1e6) / 2
    candidates = hot_spot_candidates(x[positive], y[positive], size)
    dx = np.abs(candidates[:, :1] - x[None, :])
    dy = np.abs(candidates[:, 1:] - y[None, :])
    inside = (np.hypot(dx, dy) if shape == "circle" else np.maximum(dx, dy)) <= size
    pos_counts = (inside & positive[None, :]).sum(axis=1)
    best = pos_counts.max()
    tied = np.flatnonzero(pos_counts == best)
    totals = inside[tied].sum(axis=1)
    pick = tied[np.lexsort((candidates[tied, 0], candidates[tied, 1], totals))[0]]
    return best, totals.min(), candidates[pick]


@pytest.mark.parametrize("shape", ["circle", "square"])
@pytest.mark.parametrize("seed", range(4))
def test_hot_spot_equals_brute_force_on_small_inputs(shape: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 1500, n)
    # positives denser towards one random corner, so there is a real hot spot
    corner = rng.uniform(0, 1500, 2)
    positive = rng.random(n) < np.exp(-np.hypot(x - corner[0], y - corner[1]) / 600)
    spot = hot_spot(x, y, positive, area_mm2=0.05, shape=shape)
    best, nuclei, centre = _brute_force(x, y, positive, area_mm2=0.05, shape=shape)
    assert spot is not None
    assert (spot.positive, spot.nuclei) == (best, nuclei)
    assert (spot.x_um, spot.y_um) == pytest.approx(tuple(centre))


def test_hot_spot_finds_a_planted_cluster() -> None:
    rng = np.random.default_rng(7)
    x, y = rng.uniform(0, 5000, 2000), rng.uniform(0, 5000, 2000)
    positive = rng.random(2000) < 0.05  # 5% background positives
    cx, cy = 3600.0, 1200.0
    angle, radius = rng.uniform(0, 2 * np.pi, 120), 200 * np.sqrt(rng.uniform(0, 1, 120))
    x = np.concatenate([x, cx + radius * np.cos(angle)])
    y = np.concatenate([y, cy + radius * np.sin(angle)])
    positive = np.concatenate([positive, np.ones(120, bool)])
    spot = hot_spot(x, y, positive, area_mm2=0.2)
    assert spot is not None and spot.shape == "circle"
    assert spot.size_um == pytest.approx(math.sqrt(0.2e6 / math.pi))  # 252.3 µm radius
    assert math.hypot(spot.x_um - cx, spot.y_um - cy) < 60
    assert spot.positive >= 120 and spot.labelling_index_percent > 80
    assert score_nuclei(x, y, positive.astype(np.int8), PostprocessConfig())["labelling_index_percent"] < 15


def test_no_positive_nucleus_has_no_hot_spot() -> None:
    assert hot_spot(np.arange(5.0), np.arange(5.0), np.zeros(5, bool)) is None
    assert hot_spot(np.zeros(0), np.zeros(0), np.zeros(0, bool)) is None


def test_scores_gathered_part_by_part_equal_the_whole() -> None:
    rng = np.random.default_rng(3)
    n = 500
    table = {
        "centroid_x_um": rng.uniform(0, 3000, n), "centroid_y_um": rng.uniform(0, 3000, n),
        "dab_intensity": rng.integers(0, 4, n).astype(np.int8), "area_um2": rng.uniform(5, 300, n),
        "dab_od": rng.uniform(0, 2, n),
    }
    regions = np.where(table["centroid_x_um"] < 1000, "tumour", None)
    profile = PostprocessConfig()
    scores = ScoreAccumulator(profile)
    for start in range(0, n, 128):
        part = {key: value[start:start + 128] for key, value in table.items()}
        scores.add(part, regions[start:start + 128])
    summary = scores.summary(um_per_level0_px=0.25)
    whole = score_nuclei(table["centroid_x_um"], table["centroid_y_um"], table["dab_intensity"], profile,
                         um_per_level0_px=0.25)
    assert {k: summary[k] for k in whole} == whole
    assert summary["hot_spot"]["centre_x"] == pytest.approx(summary["hot_spot"]["centre_x_um"] / 0.25, abs=0.01)
    inside = table["centroid_x_um"] < 1000
    assert summary["regions"]["tumour"]["nuclei"] == inside.sum()
    assert summary["regions"]["tumour"]["positive"] == (table["dab_intensity"][inside] > 0).sum()
    with_areas = scores.summary(region_areas_mm2={"tumour": 2.0, "empty": 0.5})
    assert with_areas["regions"]["tumour"]["nuclei_per_mm2"] == pytest.approx(inside.sum() / 2.0, abs=0.01)
    assert with_areas["regions"]["empty"]["nuclei"] == 0 and with_areas["regions"]["empty"]["nuclei_per_mm2"] == 0
    assert sum(summary["histograms"]["area_um2"]["counts"]) == n  # larger areas in the last bin
    assert sum(summary["histograms"]["dab_od"]["counts"]) == n
