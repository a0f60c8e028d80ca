"""Model API: networks' shapes, card validation, safetensors round trip and its failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nucflow.errors import ModelError
from nucflow.models import (
    ModelCard,
    PatchGAN,
    UNet,
    build_unet,
    default_model_path,
    load_model,
    save_model,
)

SMALL = ModelCard(ngf=4, depth=3, norm="instance", dropout=0.0, dropout_blocks=0, mpp=0.5,
                  tile_size=64, r=60.0)


def test_paper_unet_has_pix2pix_unet256_size() -> None:
    unet = UNet(3, 1, ngf=64, depth=8)
    n_params = sum(p.numel() for p in unet.parameters())
    assert 54.0e6 < n_params < 54.8e6  # pix2pix unet_256: 54.4 M
    assert sum(isinstance(m, torch.nn.Dropout) for m in unet.modules()) == 3


def test_unet_and_patchgan_shapes() -> None:
    unet = UNet(1, 3, ngf=4, depth=3, norm="batch", dropout=0.5, dropout_blocks=1)
    assert unet(torch.zeros(2, 1, 32, 48)).shape == (2, 3, 32, 48)
    disc = PatchGAN(3, ndf=4, n_layers=3)
    assert disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_unknown_norm_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown norm 'group'"):
        UNet(3, 1, ngf=4, depth=3, norm="group")


def test_round_trip_file_and_folder(tmp_path) -> None:
    torch.manual_seed(0)
    unet = build_unet(SMALL)
    written = save_model(tmp_path / "m.safetensors", unet, SMALL)
    assert len(written.model_id) == 16 and written.software_version
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.card == written
    assert loaded.card.input_multiple == 8 and loaded.card.widths == (4, 8, 16)
    x = torch.rand(1, 3, 64, 64)
    seg = loaded.build()
    expected = torch.sigmoid(60.0 * unet.eval()(x * 2 - 1))
    assert torch.allclose(seg(x), expected, atol=1e-6)
    save_model(tmp_path / "folder", unet, SMALL)
    assert load_model(tmp_path / "folder").card.model_id == written.model_id


def test_missing_card_and_weights(tmp_path) -> None:
    save_model(tmp_path / "m.safetensors", build_unet(SMALL), SMALL)
    (tmp_path / "m.json").unlink()
    with pytest.raises(ModelError, match="model card .* does not exist"):
        load_model(tmp_path / "m.safetensors")
    with pytest.raises(ModelError, match="weights .*x.safetensors does not exist"):
        load_model(tmp_path / "x.safetensors")
    with pytest.raises(ModelError, match="must be a .safetensors file or a folder"):
        load_model(tmp_path / "x.pt")


def test_corrupt_weights(tmp_path) -> None:
    card = save_model(tmp_path / "m.safetensors", build_unet(SMALL), SMALL)
    (tmp_path / "m.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="do not match their model card"):
        load_model(tmp_path / "m.safetensors")
    unhashed = json.loads((tmp_path / "m.json").read_text()) | {"model_id": ""}
    (tmp_path / "m.json").write_text(json.dumps(unhashed))
    with pytest.raises(ModelError, match="corrupt or not safetensors"):
        load_model(tmp_path / "m.safetensors")
    assert card.model_id


def test_card_not_matching_weights(tmp_path) -> None:
    save_model(tmp_path / "m.safetensors", build_unet(SMALL), SMALL)
    data = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps(data | {"ngf": 8, "widths": [8, 16, 32]}))
    with pytest.raises(ModelError, match="do not match the architecture"):
        load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "format_version 99; this nucflow reads version 1"),
        ({"format": "other"}, "not a nucflow model"),
        ({"colour": "x"}, "unknown field 'colour'"),
        ({"stain_profile": "pas"}, "unsupported stain_profile 'pas'"),
        ({"input_multiple": 4}, "input_multiple disagrees"),
        ({"head": "distance"}, "unsupported head 'distance' \\(expected one of mask, interior\\)"),
        ({"head": "interior"}, "do not match the architecture"),  # 1-channel weights, 2-channel card
    ],
)
def test_unknown_card_is_refused(tmp_path, change, message) -> None:
    save_model(tmp_path / "m.safetensors", build_unet(SMALL), SMALL)
    data = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps(data | change))
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "m.safetensors")


def test_card_that_is_not_json(tmp_path) -> None:
    save_model(tmp_path / "m.safetensors", build_unet(SMALL), SMALL)
    (tmp_path / "m.json").write_text("{oops")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(tmp_path / "m.safetensors")


def test_default_model_when_shipped() -> None:
    path = default_model_path()
    if path is None:
        pytest.skip("no default model shipped yet")
    loaded = load_model(path)
    model = loaded.build()
    side = loaded.card.input_multiple
    out = model(torch.rand(1, 3, side, side))
    assert out.shape == (1, 1, side, side)
    assert np.isfinite(out.detach().numpy()).all()


def test_test_time_augmentation_averages_the_views(tmp_path):
    import numpy as np
    import torch

    from nucflow.inference.predictors import UNetPredictor
    from nucflow.models import ModelCard, build_unet, load_model, save_model

    card = ModelCard(ngf=4, depth=3, norm="none", dropout=0.0, dropout_blocks=0, r=1.0, mpp=0.5, tile_size=64)
    torch.manual_seed(0)
    save_model(tmp_path / "m", build_unet(card), card)
    model = load_model(tmp_path / "m")
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    plain = UNetPredictor(model, amp=False, channels_last=False)
    views = []
    for k in range(4):
        for flip in (False, True):
            view = np.rot90(batch, k, axes=(1, 2))
            view = view[:, :, ::-1] if flip else view
            prob = plain(np.ascontiguousarray(view))
            prob = prob[:, :, ::-1] if flip else prob
            views.append(np.rot90(prob, -k, axes=(1, 2)))
    dihedral = UNetPredictor(model, amp=False, channels_last=False, tta="dihedral")(batch)
    np.testing.assert_allclose(dihedral, np.mean(views, axis=0), atol=1e-5)
    flips = UNetPredictor(model, amp=False, tta="flips")(batch)
    np.testing.assert_allclose(flips, np.mean([views[i] for i in (0, 1, 4, 5)], axis=0), atol=1e-5)
    assert not np.allclose(dihedral, plain(batch), atol=1e-4)  # the views differ: averaging did something
