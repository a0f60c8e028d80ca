"""Tile-sized inputs and one way to run a method: ``segment`` and ``evaluate`` agree on a real tile."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree
from skimage import io as skio

from nucflow.config import CONFIG_DIR
from nucflow.evaluation import evaluate
from nucflow.pipeline import load_segment_config, segment
from nucflow.pipeline.image import method_spec, segment_image, with_stain_profile
from nucflow.postprocess import load_stain_profile
from nucflow.slide import tissue_mask

LUNG1_NUCLEI = 61


@pytest.fixture(scope="module")
def lung1(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepLIIF's Lung1 tile (512x512 at 0.25 µm/px) and its truth, in folders of their own."""
    root = tmp_path_factory.mktemp("lung1")
    for kind in ("images", "groundtruth"):
        (root / kind).mkdir()
        shutil.copy(shared_data / "ihc/deepliif" / kind / "Lung1.png", root / kind / "Lung1.png")
    return root


def test_a_tile_that_is_all_tissue_is_kept(lung1: Path) -> None:
    rgb = skio.imread(lung1 / "images/Lung1.png")[..., :3]
    defaults = load_segment_config().tissue
    # 0.016 mm² of tissue, below the 0.02 mm² speck area: kept because it is the whole image
    mask = tissue_mask(rgb, mpp=0.25, min_area_um2=defaults.min_area_um2)
    assert mask.mean() > 0.9
    # on a slide thumbnail a small speck is still dropped
    thumb = np.full((400, 400, 3), 245, np.uint8)
    thumb[10:14, 10:14] = (120, 80, 140)
    thumb[100:300, 100:300] = (200, 150, 180)
    mask = tissue_mask(thumb, mpp=8.0, min_area_um2=defaults.min_area_um2)
    assert not mask[10:14, 10:14].any() and mask[150:250, 150:250].all()


@pytest.fixture(scope="module")
def shrunk_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled weights under a card saying they outline nuclei 1 µm inside their edge."""
    from nucflow.models import default_model_path, load_model, save_model

    loaded = load_model(default_model_path())
    path = tmp_path_factory.mktemp("shrunk") / "model.safetensors"
    save_model(path, loaded.build().unet, replace(loaded.card, mask_shrink_um=1.0, model_id=""))
    return path


@pytest.fixture(scope="module")
def interior_model(tmp_path_factory: pytest.TempPathFactory, bundled_member) -> Path:
    """An "interior" head made of the bundled weights (its first member's, for an ensemble):
    channel 0 is the bundled mask, channel 1 the same logits 0.05 lower (after sharpening: the
    mask eroded where the model is unsure)."""
    from nucflow.models import build_unet, save_model

    card, state = bundled_member()
    card = replace(card, head="interior")
    state["model.up.1.weight"] = state["model.up.1.weight"].repeat(1, 2, 1, 1)
    state["model.up.1.bias"] = torch.cat([state["model.up.1.bias"], state["model.up.1.bias"] - 0.05])
    unet = build_unet(card, out_channels=2)
    unet.load_state_dict(state)
    path = tmp_path_factory.mktemp("interior") / "model.safetensors"
    save_model(path, unet, card)
    return path


@pytest.fixture(scope="module")
def ensemble_model(
    tmp_path_factory: pytest.TempPathFactory, bundled_member, bundled_member_model: Path
) -> tuple[Path, list[Path]]:
    """An ensemble (``nucflow ensemble``) of two models: the bundled weights (its first member's,
    for an ensemble: ``bundled_member_model``) and a copy whose output bias is 0.02 lower (1.2
    after sharpening: a second, distinct member); and the members' paths."""
    from nucflow.models import build_unet, ensemble_models, save_model

    folder = tmp_path_factory.mktemp("ensemble")
    card, state = bundled_member()
    unet = build_unet(card)
    unet.load_state_dict(state | {"model.up.1.bias": state["model.up.1.bias"] - 0.02})
    save_model(folder / "other.safetensors", unet, card)
    members = [bundled_member_model, folder / "other.safetensors"]
    ensemble_models(members, folder / "ensemble.safetensors")
    return folder / "ensemble.safetensors", members


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("method", ["unet", "threshold", "shrunk", "interior", "gated", "ensemble"])
def test_segment_and_evaluate_give_the_same_nuclei(lung1: Path, tmp_path: Path, method: str, shrunk_model,
                                                   interior_model, ensemble_model) -> None:
    config = load_segment_config()  # the default configuration
    if method == "gated":  # a profile with a strong stain gate: the Ray tiles gate as segment_image does
        profile = tmp_path / "gated.yaml"
        text = (CONFIG_DIR / "stains" / "ki67.yaml").read_text()
        profile.write_text(re.sub(r"(?m)^stain_gate:.*$", "", text) + "\nstain_gate: 1.5\n")
        config = replace(config, method="unet", stain_profile=str(profile))
    elif method == "shrunk":  # a model trained on shrunk masks: its labels are grown back the same way
        config = replace(config, method="unet", model=str(shrunk_model))
    elif method == "interior":  # an "interior" head: markers from its interiors, in both commands
        config = replace(config, method="unet", model=str(interior_model))
    elif method == "ensemble":  # two models' maps averaged, in both commands
        config = replace(config, method="unet", model=str(ensemble_model[0]))
    else:
        config = replace(config, method=method)
    result = segment([lung1 / "images/Lung1.png"], tmp_path / "out", config=config, mpp=0.25)
    assert [s.status for s in result.slides] == ["ok"], result.slides
    table = gpd.read_parquet(tmp_path / "out" / result.slides[0].slide / "nuclei.parquet")
    assert len(table) > LUNG1_NUCLEI // 2  # a tile-sized image finds its nuclei

    rgb = skio.imread(lung1 / "images/Lung1.png")[..., :3]
    spec = method_spec(config)
    config = with_stain_profile(config, spec)  # as segment's pre-flight names it (the card's)
    mine = segment_image(rgb, mpp=0.25, spec=spec, config=config)
    assert int(mine.labels.max()) == len(table)
    # the same nuclei: centroids (level-0 px) agree, and so do the positivity calls
    labels = mine.labels
    index = np.arange(1, len(table) + 1)
    rows, cols = np.nonzero(labels)
    area = np.bincount(labels[rows, cols], minlength=len(index) + 1)[1:]
    centre = np.stack([np.bincount(labels[rows, cols], weights=w, minlength=len(index) + 1)[1:] / area
                       for w in (rows, cols)], axis=1)
    ours = (centre + 0.5) * (spec.mpp / 0.25) - 0.5  # working-resolution px -> level-0 px
    theirs = table[["centroid_y", "centroid_x"]].to_numpy()
    distance, _ = cKDTree(theirs).query(ours)
    assert distance.max() < 1.0, distance.max()
    calls = mine.positive(load_stain_profile(config.stain_profile))
    assert sum(calls.values()) == int(table["dab_positive"].sum())

    report = evaluate(lung1 / "images", lung1 / "groundtruth", methods=[config.method], mpp=0.25,
                      model=config.model, stain_profile=config.stain_profile)
    row = next(r for r in report.rows() if r["image"] == "Lung1")
    if method == "shrunk":  # grown by 1 µm: larger than the same weights' plain nuclei
        plain = segment_image(rgb, mpp=0.25, spec=method_spec(replace(config, model=None)), config=config)
        assert (mine.labels > 0).sum() > (plain.labels > 0).sum()
    if method == "gated":  # the gate changed the nuclei
        plain = segment_image(rgb, mpp=0.25, spec=spec, config=config,
                              profile=replace(load_stain_profile(config.stain_profile), stain_gate=0.0))
        assert (mine.probability > 0).sum() < (plain.probability > 0).sum()
        assert not np.array_equal(mine.labels, plain.labels)
    if method == "ensemble":  # the map (before the stain gate) is the mean of the members' maps
        ungated = replace(load_stain_profile(config.stain_profile), stain_gate=0.0)
        maps = [segment_image(rgb, mpp=0.25, spec=method_spec(replace(config, model=str(m))), config=config,
                              profile=ungated).probability for m in [ensemble_model[0], *ensemble_model[1]]]
        np.testing.assert_allclose(maps[0], (maps[1] + maps[2]) / 2, atol=1e-5)
        assert not np.allclose(maps[1], maps[2], atol=1e-2)
    if method == "interior":  # the same weights read as a plain mask give other nuclei
        plain = segment_image(rgb, mpp=0.25, spec=method_spec(replace(config, model=None)), config=config)
        assert not np.array_equal(mine.labels, plain.labels)
    assert row["n_pred"] == len(table) and row["n_true"] == LUNG1_NUCLEI


def test_a_shrunk_model_is_grown_on_top_of_the_profiles_growth() -> None:
    """The card's shrink undoes what the model learnt; the profile's growth (ki67: 0.25 µm) is
    post-processing chosen on validation: the two add, and a plain model keeps the profile's."""
    from nucflow.pipeline.image import adapt_profile
    from nucflow.postprocess import load_stain_profile

    ki67 = load_stain_profile("ki67")
    assert ki67.expand_um == 0.25
    assert adapt_profile(ki67, shrink_um=1.0).expand_um == pytest.approx(1.25)
    assert adapt_profile(ki67).expand_um == 0.25
    assert ki67.in_pixels(0.25).expansion == 1 and ki67.in_pixels(0.5).expansion == 0  # the baselines' 0.5 µm/px


def test_shrink_scales_with_the_working_resolution(shrunk_model: Path) -> None:
    """The model shrinks nuclei by a number of its own pixels: run at half its card's µm/px, that
    is half as many µm, and the labels are grown back by as much."""
    from nucflow.pipeline.image import mask_shrink_um

    config = replace(load_segment_config(), method="unet", model=str(shrunk_model))
    spec = method_spec(config)
    assert mask_shrink_um(spec) == pytest.approx(1.0)
    assert mask_shrink_um(method_spec(replace(config, model_mpp=spec.mpp / 2))) == pytest.approx(0.5)
    assert mask_shrink_um(method_spec(replace(config, method="threshold"))) == 0.0
