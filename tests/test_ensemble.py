"""Ensembles of models (``nucflow ensemble``): the mean of the members' maps, refused when unsound."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nucflow.cli import main
from nucflow.errors import ModelError
from nucflow.models import ModelCard, build_unet, ensemble_models, load_model, save_model

CARD = ModelCard(ngf=4, depth=3, norm="none", dropout=0.0, dropout_blocks=0, mpp=0.5, tile_size=64, r=2.0)


def _member(folder: Path, seed: int, card: ModelCard = CARD) -> Path:
    torch.manual_seed(seed)
    save_model(folder / f"m{seed}", build_unet(card, out_channels=card.out_channels), card)
    return folder / f"m{seed}"


def test_the_ensemble_map_is_the_mean_of_its_members_maps(tmp_path: Path) -> None:
    paths = [_member(tmp_path, seed) for seed in (0, 1, 2)]
    result = CliRunner().invoke(main, ["ensemble", *map(str, paths), "-o", str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    assert "an ensemble of 3" in result.output
    ensemble = load_model(tmp_path / "ens")
    assert ensemble.card.members == 3 and ensemble.card.mpp == CARD.mpp
    assert [m["model_id"] for m in ensemble.card.training["ensemble"]] == [load_model(p).card.model_id for p in paths]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        # each member by hand: sigmoid(r * UNet(2x - 1)), then their mean
        members = [load_model(p) for p in paths]
        expected = torch.stack([torch.sigmoid(CARD.r * m.build().unet(x * 2 - 1)) for m in members]).mean(0)
        got = ensemble.build()(x)
    assert got.shape == (2, 1, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, members[0].build()(x), atol=1e-4)  # the members differ: the mean did something


def test_under_bf16_autocast_the_ensemble_map_is_still_the_mean_of_its_members_maps(tmp_path: Path) -> None:
    # Where inference runs under autocast (a GPU, or a CPU with native bf16: see
    # nucflow.inference.predictors), the UNets compute in bf16. The map must still be the float32
    # mean of the members' own maps; summed and divided in bf16 it was off by up to 2**-9.
    paths = [_member(tmp_path, seed) for seed in (0, 1)]
    ensemble_models(paths, tmp_path / "ens.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps = [load_model(p).build()(x) for p in paths]
        got = load_model(tmp_path / "ens.safetensors").build()(x)
    assert got.dtype == torch.float32 and all(m.dtype == torch.float32 for m in maps)
    torch.testing.assert_close(got, (maps[0] + maps[1]) / 2, atol=1e-6, rtol=0)
    assert not torch.equal(maps[0], maps[1])  # the members differ


def test_an_interior_head_ensemble_averages_both_channels(tmp_path: Path) -> None:
    card = replace(CARD, head="interior")
    paths = [_member(tmp_path, seed, card) for seed in (0, 1)]
    ensemble_models(paths, tmp_path / "ens.safetensors")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        logits = [load_model(p).build().unet(x * 2 - 1) for p in paths]
        expected = torch.stack([torch.sigmoid(card.r * t) for t in logits]).mean(dim=(0, 2)).unsqueeze(1)
        torch.testing.assert_close(load_model(tmp_path / "ens.safetensors").build()(x), expected, atol=1e-6, rtol=0)


def test_unsound_ensembles_are_refused(tmp_path: Path) -> None:
    a, b = _member(tmp_path, 0), _member(tmp_path, 1)
    with pytest.raises(ModelError, match="two or more models; got 1"):
        ensemble_models([a], tmp_path / "e1")
    with pytest.raises(ModelError, match="are the same weights"):
        ensemble_models([a, a], tmp_path / "e2")
    other = tmp_path / "other"
    torch.manual_seed(3)
    save_model(other, build_unet(CARD), replace(CARD, mpp=0.25))
    with pytest.raises(ModelError, match=r"differ in mpp \(0.5 against 0.25\)"):
        ensemble_models([a, other], tmp_path / "e3")
    ensemble_models([a, b], tmp_path / "ab")
    with pytest.raises(ModelError, match="is itself an ensemble of 2; list its members"):
        ensemble_models([tmp_path / "ab", _member(tmp_path, 4)], tmp_path / "e4")
    assert not any((tmp_path / name).exists() for name in ("e1", "e2", "e3", "e4"))
    missing = tmp_path / "missing.safetensors"
    result = CliRunner().invoke(main, ["ensemble", str(a), str(missing), "-o", str(tmp_path / "e5")])
    assert result.exit_code == 1 and "missing" in result.output and "does not exist" in result.output


def test_a_card_whose_members_disagree_with_its_weights_is_refused(tmp_path: Path) -> None:
    ensemble_models([_member(tmp_path, 0), _member(tmp_path, 1)], tmp_path / "ens")
    card = tmp_path / "ens" / "model.json"
    data = json.loads(card.read_text())
    card.write_text(json.dumps(data | {"members": 1}))
    with pytest.raises(ModelError, match="do not match the architecture"):
        load_model(tmp_path / "ens")
    card.write_text(json.dumps(data | {"members": 0}))
    with pytest.raises(ModelError, match=r"unsupported members 0 \(expected 1 or more\)"):
        load_model(tmp_path / "ens")
