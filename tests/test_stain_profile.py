"""The stain profile comes from the model card unless one is given: a HER2 model gets HER2
post-processing (its erosion) without flags, in segment and in evaluate; an explicit profile
that names another stain wins, with a warning."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nucflow.pipeline import load_segment_config
from nucflow.pipeline.image import method_spec, postprocess_profile, with_stain_profile
from nucflow.pipeline.preflight import preflight


@pytest.fixture(scope="module")
def her2_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from nucflow.models import ModelCard, build_unet, save_model

    card = ModelCard(ngf=4, depth=4, norm="batch", dropout=0.0, r=1.0, mpp=0.5, tile_size=128, stain_profile="her2")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("her2") / "her2.safetensors"
    save_model(path, build_unet(card), card)
    return path


def test_her2_card_gets_her2_postprocessing_without_flags(tmp_path: Path, small_svs: Path, her2_model: Path) -> None:
    config = replace(load_segment_config(), model=str(her2_model))
    assert config.stain_profile is None  # the shipped segment.yaml names none: the card decides
    ready = preflight([small_svs], tmp_path / "out", config=config, mpp=None, force_mpp=False, load_spec=method_spec)
    assert ready.config.stain_profile == "her2"
    profile = postprocess_profile(ready.config)
    assert profile.stain_profile == "her2" and profile.erosion_um == 1.0


def test_baselines_and_the_bundled_ki67_model_get_ki67(tmp_path: Path, small_svs: Path) -> None:
    for method in ("threshold", "unet"):
        config = replace(load_segment_config(), method=method)
        ready = preflight([small_svs], tmp_path / "out", config=config, mpp=None, force_mpp=False,
                          load_spec=method_spec)
        assert ready.config.stain_profile == "ki67"
        assert postprocess_profile(ready.config).erosion_um == 0.0


def test_explicit_profile_against_the_card_wins_with_a_warning(her2_model: Path, caplog) -> None:
    config = replace(load_segment_config(), model=str(her2_model), stain_profile="ki67")
    spec = method_spec(config)
    with caplog.at_level(logging.WARNING, logger="nucflow.pipeline.image"):
        resolved = with_stain_profile(config, spec)
    assert resolved.stain_profile == "ki67"
    assert "stain profile 'ki67' (ki67) overrides the model card's 'her2'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nucflow.pipeline.image"):
        same = with_stain_profile(replace(config, stain_profile="her2"), spec)
    assert same.stain_profile == "her2" and caplog.text == ""


def test_evaluate_uses_the_card_profile(tmp_path: Path, her2_model: Path) -> None:
    import imageio.v3 as iio

    from nucflow.evaluation import evaluate

    rgb = np.full((128, 128, 3), 230, np.uint8)
    rgb[40:60, 40:60] = (70, 60, 130)
    truth = np.zeros((128, 128), np.uint16)
    truth[40:60, 40:60] = 1
    (tmp_path / "images").mkdir()
    (tmp_path / "truth").mkdir()
    iio.imwrite(tmp_path / "images" / "a.png", rgb)
    iio.imwrite(tmp_path / "truth" / "a.png", truth)
    report = evaluate(tmp_path / "images", tmp_path / "truth", methods=["unet", "threshold"], model=her2_model,
                      mpp=0.5, truth_format="labels")
    assert report.settings["stain_profiles"] == {"unet": "her2", "threshold": "ki67"}


def test_editing_a_profile_file_changes_the_run_hash_but_not_the_map(tmp_path: Path, small_svs: Path) -> None:
    """The run hash holds the profile's contents, not its path: a slide finished with a profile
    is finished again after the file changes (its probability map is kept)."""
    from nucflow.pipeline.plan import plan_slide
    from nucflow.postprocess._config import STAIN_DIR

    profile = tmp_path / "mine.yaml"
    profile.write_text((STAIN_DIR / "ki67.yaml").read_text())
    config = replace(load_segment_config(), method="threshold", stain_profile=str(profile))
    spec = method_spec(config)

    def plan():
        result = plan_slide(small_svs, "small", tmp_path / "out", spec=spec, config=config, mpp=None, overwrite=True)
        assert result.status == "todo", result.error
        return result

    before = plan()
    profile.write_text(profile.read_text().replace("min_area_um2: 10.0", "min_area_um2: 12.5"))
    after = plan()
    assert after.map_hash == before.map_hash and after.run_hash != before.run_hash
    assert plan().run_hash == after.run_hash  # and it is stable
