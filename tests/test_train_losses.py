"""Loss terms, stain jitter and the GAN step on tiny tensors, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import hed_from_rgb, rgb2hed, rgb_from_hed

from nucflow.errors import ConfigError, TrainingError
from nucflow.training import (
    DataConfig,
    LossConfig,
    NetworkConfig,
    TrainConfig,
    hed_jitter,
    hematoxylin,
    l1,
    load_train_config,
    lsgan_d,
    lsgan_g,
    sharpen,
)
from nucflow.training._gan import Batch, build_nets, current_r, train_step


def test_lsgan_generator_and_discriminator() -> None:
    fake = torch.tensor([0.0, 0.5, 1.0, 2.0])
    assert float(lsgan_g(fake)) == pytest.approx((1 + 0.25 + 0 + 1) / 4)
    real = torch.tensor([1.0, 0.0])
    assert float(lsgan_d(real, torch.tensor([0.0, 1.0]))) == pytest.approx(0.5 * (0.5 + 0.5))
    assert float(lsgan_d(torch.ones(3), torch.zeros(3))) == 0.0


def test_l1() -> None:
    a = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    assert float(l1(a, torch.zeros(2, 2))) == pytest.approx(1.0)


def test_sharpening_saturates() -> None:
    logits = torch.tensor([-0.1, -0.01, 0.0, 0.01, 0.1])
    assert torch.allclose(sharpen(logits, 1.0), torch.sigmoid(logits))
    sharp = sharpen(logits, 60.0)
    assert float(sharp[0]) < 0.0025 and float(sharp[-1]) > 0.9975  # sigmoid(±6)
    assert float(sharp[2]) == 0.5
    assert float(sharp[3]) == pytest.approx(1 / (1 + np.exp(-0.6)))


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.95, size=(4, 5, 3))


def test_hed_jitter_matches_skimage_colour_deconvolution() -> None:
    rgb = _rgb()
    factors = np.array([1.1, 1.0, 0.9])
    log_min = np.log(1e-6)  # skimage's rgb2hed / hed2rgb, without clipping concentrations
    hed = (np.log(rgb) / log_min) @ hed_from_rgb * factors
    expected = np.clip(np.exp((hed * log_min) @ rgb_from_hed), 0, 1)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() * 2 - 1
    out = hed_jitter(x, torch.tensor(factors[None], dtype=torch.float32))
    got = ((out[0].permute(1, 2, 0) + 1) / 2).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert not np.allclose(got, rgb, atol=1e-3)


def test_hed_jitter_identity_and_hematoxylin_channel() -> None:
    x = torch.from_numpy(_rgb(1)).permute(2, 0, 1)[None].float() * 2 - 1
    assert torch.allclose(hed_jitter(x, torch.ones(1, 3)), x, atol=1e-4)
    h = hematoxylin(x)
    expected = np.clip(rgb2hed(_rgb(1))[..., 0] / 0.15, 0, 1) * 2 - 1
    assert h.shape == (1, 1, 4, 5)
    assert np.allclose(h[0, 0].numpy(), expected, atol=1e-4)


def test_sharpening_warm_up() -> None:
    config = TrainConfig(loss=LossConfig(r=60.0, r_warmup_steps=100))
    assert [current_r(config, s) for s in (0, 50, 100, 500)] == [1.0, 30.5, 60.0, 60.0]


TINY = TrainConfig(
    network=NetworkConfig(ngf=4, depth=3, norm="instance", dropout=0.0, dropout_blocks=0, ndf=4,
                          d_norm="instance"),
    data=DataConfig(crop=32, batch_size=2),
    loss=LossConfig(pseudo=1.0, pseudo_steps=1, jitter=0.1),
)


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(x=torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
                 pseudo=(torch.rand(2, 1, 32, 32, generator=g) > 0.5).float(),
                 mask=(torch.rand(2, 1, 32, 32, generator=g) > 0.7).float(),
                 factors=1 + 0.1 * torch.rand(2, 2, 3, generator=g))


@pytest.mark.parametrize("profile", ["ki67", "her2"])
def test_train_step_terms_and_updates(profile: str) -> None:
    torch.manual_seed(0)
    config = TrainConfig(**{**TINY.__dict__, "stain_profile": profile})
    nets = build_nets(config)
    before = [p.clone() for p in nets.d_s.parameters()]
    warm = train_step(nets, _batch(), step=0, config=config)
    assert set(warm) == {"pseudo", "cycle_ihc", "total"}
    assert warm["total"] == pytest.approx(warm["pseudo"] + 10 * warm["cycle_ihc"], rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, nets.d_s.parameters(), strict=True))
    adv = train_step(nets, _batch(), step=1, config=config)
    assert {"cycle_ihc", "cycle_mask", "gan_s", "gan_r", "consistency", "d_s", "d_r"} <= set(adv)
    expected = (10 * (adv["cycle_ihc"] + adv["cycle_mask"]) + adv["gan_s"] + adv["gan_r"]
                + adv["consistency"])
    assert adv["total"] == pytest.approx(expected, rel=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(before, nets.d_s.parameters(), strict=True))


def test_hematoxylin_cycle_target_rebuilds_the_hematoxylin_channel_under_ki67() -> None:
    """``loss.cycle_target: hematoxylin``: R has one output channel, the warm start's cycle is
    the L1 of R(pseudo-mask) against the tile's hematoxylin channel (computed here by hand), and
    training is the "her2" profile's step for step while the card keeps ki67."""
    loss = LossConfig(**{**TINY.loss.__dict__, "cycle_target": "hematoxylin"})
    config = TrainConfig(**{**TINY.__dict__, "loss": loss})
    assert config.stain_profile == "ki67" and config.hematoxylin_cycle and not TINY.hematoxylin_cycle
    torch.manual_seed(0)
    nets = build_nets(config)
    b = _batch()
    with torch.no_grad():
        rebuilt = nets.r(b.pseudo)
        assert rebuilt.shape == (2, 1, 32, 32)
        expected = float((rebuilt - hematoxylin(b.x)).abs().mean())
    warm = train_step(nets, b, step=0, config=config)
    assert warm["cycle_ihc"] == pytest.approx(expected, rel=1e-6)
    her2 = TrainConfig(**{**TINY.__dict__, "stain_profile": "her2"})
    losses = {}
    for name, cfg in (("option", config), ("her2", her2), ("rgb", TINY)):
        torch.manual_seed(0)
        run = build_nets(cfg)
        losses[name] = [train_step(run, _batch(), step=step, config=cfg) for step in (0, 1, 2)]
    assert losses["option"] == losses["her2"]
    assert losses["option"][0]["cycle_ihc"] != losses["rgb"][0]["cycle_ihc"]


def test_ablations_switch_terms_off() -> None:
    config = TrainConfig(**{**TINY.__dict__, "loss": LossConfig(consistency=0.0, cycle=0.0)})
    out = train_step(build_nets(config), _batch(), step=0, config=config)
    assert "consistency" not in out
    assert out["total"] == pytest.approx(out["gan_s"] + out["gan_r"], rel=1e-5)


def test_d_r_handicap_skips_odd_steps() -> None:
    config = TrainConfig(**{**TINY.__dict__, "loss": LossConfig(),
                            "optim": TINY.optim.__class__(d_r_every=2)})
    nets = build_nets(config)
    assert "d_r" in train_step(nets, _batch(), step=0, config=config)
    assert "d_r" not in train_step(nets, _batch(), step=1, config=config)


def test_config_files_load_and_typos_are_refused(tmp_path) -> None:
    for name in ("paper", "cpu"):
        config = load_train_config(name)
        assert config.data.crop % 2**config.network.depth == 0
    paper = load_train_config("paper")
    assert (paper.network.depth, paper.network.ngf, paper.data.batch_size, paper.epochs) == (
        8, 64, 30, 600)
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  cycel: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'cycel'.*bad.yaml"):
        load_train_config(bad)
    bad.write_text("data:\n  crop: 100\n")
    with pytest.raises(ConfigError, match="data.crop 100 must be a multiple"):
        load_train_config(bad)
    bad.write_text("select: best\n")
    with pytest.raises(ConfigError, match="select must be one of"):
        load_train_config(bad)


def test_checkpoint_selection_rules() -> None:
    from nucflow.training import select_checkpoint

    cands = [("a", {"step": 100, "total": 1.0}),  # warm start: no D_S loss yet
             ("b", {"step": 200, "total": 3.0, "d_s": 0.30}),
             ("c", {"step": 300, "total": 2.0, "d_s": 0.10}),
             ("d", {"step": 400, "total": 2.5, "d_s": 0.20})]
    by_total = TrainConfig(select="total", select_after=200)
    assert select_checkpoint(cands, config=by_total)[0] == "c"
    assert select_checkpoint(cands, config=TrainConfig(select="d_s", select_after=200))[0] == "b"
    assert select_checkpoint(cands, config=TrainConfig(select="d_s", select_after=300))[0] == "d"
    assert select_checkpoint(cands, config=TrainConfig(select_after=10**6))[0] == "d"  # the last
    with pytest.raises(TrainingError, match="no checkpoint"):
        select_checkpoint([], config=by_total)


def test_moving_average_of_s_follows_its_decay_and_survives_a_checkpoint(tmp_path) -> None:
    from dataclasses import replace

    from nucflow.training._loop import _state, exported_weights, load_state

    torch.manual_seed(0)
    config = replace(TINY, optim=replace(TINY.optim, ema=0.75))
    nets = build_nets(config)
    assert nets.s_ema is not None and build_nets(TINY).s_ema is None
    seen = []
    for step in (0, 1, 2):
        train_step(nets, _batch(), step=step, config=config)
        seen.append({k: v.detach().clone() for k, v in nets.s.state_dict().items()})
    for k, v in nets.s_ema.module.state_dict().items():  # the first update copies S
        expected = 0.75 * (0.75 * seen[0][k] + 0.25 * seen[1][k]) + 0.25 * seen[2][k]
        assert torch.allclose(v, expected, atol=1e-6), k
    torch.save(_state(nets, 3), tmp_path / "state.pt")
    state = load_state(tmp_path / "state.pt")
    assert exported_weights(state).keys() == state["s"].keys() and state["s_ema_n"] == 3
    assert all(torch.equal(exported_weights(state)[k], v)
               for k, v in nets.s_ema.module.state_dict().items())
    again = build_nets(config)
    load_state(tmp_path / "state.pt", again)
    assert int(again.s_ema.n_averaged) == 3
    assert all(torch.equal(a, b) for a, b in zip(again.s_ema.parameters(), nets.s_ema.parameters(),
                                                 strict=True))
    plain = build_nets(TINY)
    torch.save(_state(plain, 1), tmp_path / "plain.pt")
    assert exported_weights(load_state(tmp_path / "plain.pt")).keys() == state["s"].keys()
    with pytest.raises(TrainingError, match="optim.ema 0"):
        load_state(tmp_path / "plain.pt", build_nets(config))


def test_interior_head_trains_and_exports_a_segmentator_averaging_its_two_channels(tmp_path) -> None:
    from dataclasses import replace

    from nucflow.models import load_model
    from nucflow.training._export import export_checkpoint

    torch.manual_seed(0)
    config = replace(TINY, data=replace(TINY.data, interior_um=1.0))
    nets = build_nets(config)
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    two = torch.cat([mask, mask * (torch.rand(2, 1, 32, 32, generator=g) > 0.5)], dim=1)
    batch = Batch(x=torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, pseudo=two, mask=two,
                  factors=1 + 0.1 * torch.rand(2, 2, 3, generator=g))
    for step in (0, 1):  # the warm start, then the adversarial step (D_S judges both channels)
        assert all(np.isfinite(v) for v in train_step(nets, batch, step=step, config=config).values())
    card = export_checkpoint(nets.s.state_dict(), tmp_path / "m.safetensors", config=config, steps=1,
                             losses={}, training={})
    assert card.head == "interior" and card.out_channels == 2
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.card.head == "interior"
    x = torch.rand(1, 3, 32, 32)
    both = torch.sigmoid(60.0 * nets.s.eval()(x * 2 - 1))
    assert both.shape == (1, 2, 32, 32)
    assert torch.allclose(loaded.build()(x), both.mean(dim=1, keepdim=True), atol=1e-6)
