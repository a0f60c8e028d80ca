"""The four networks, their optimisers, and one training step of the method."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from nucflow.models import HEADS, PatchGAN, build_unet
from nucflow.training._config import TrainConfig
from nucflow.training._losses import (
    HEMATOXYLIN_MAX,
    hed_jitter,
    hed_to_rgb,
    hematoxylin,
    l1,
    lsgan_d,
    lsgan_g,
)

__all__ = ["Batch", "GanNets", "build_nets", "current_r", "train_step", "unwrap"]


@dataclass
class GanNets:
    """S (IHC -> mask logits), R (mask -> IHC), D_S, D_R, their optimisers and, with
    ``optim.ema``, the moving average of S's weights (an ``AveragedModel``)."""

    s: nn.Module
    r: nn.Module
    d_s: nn.Module
    d_r: nn.Module
    opt_g: torch.optim.Optimizer
    opt_ds: torch.optim.Optimizer
    opt_dr: torch.optim.Optimizer
    s_ema: torch.optim.swa_utils.AveragedModel | None = None


@dataclass
class Batch:
    """One batch: IHC ``x`` (N, 3, H, W) in [-1, 1], ``pseudo`` and prior ``mask`` (N, C, H, W)
    in {0, 1} (C = 1, or 2 for the "interior" head: mask and interior), and stain-jitter
    ``factors`` (2, N, 3) for the two views."""

    x: torch.Tensor
    pseudo: torch.Tensor
    mask: torch.Tensor
    factors: torch.Tensor


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DistributedDataParallel wrapper (or the module itself)."""
    inner = getattr(module, "module", module)
    return inner if isinstance(inner, nn.Module) else module


def build_nets(config: TrainConfig, *, wrap: Any = None) -> GanNets:
    """Fresh networks and optimisers; ``wrap`` (e.g. ``ray.train.torch.prepare_model``)
    is applied to each network before its optimiser is made."""
    wrap = wrap or (lambda m: m)
    n, o = config.network, config.optim
    ihc_channels = 1 if config.hematoxylin_cycle else 3
    mask_channels = HEADS[config.data.head]
    s = wrap(build_unet(n, 3, mask_channels))
    r = wrap(build_unet(n, mask_channels, ihc_channels))
    d_s = wrap(PatchGAN(mask_channels, ndf=n.ndf, n_layers=n.d_layers, norm=n.d_norm))
    d_r = wrap(PatchGAN(ihc_channels, ndf=n.ndf, n_layers=n.d_layers, norm=n.d_norm))
    betas = (o.beta1, o.beta2)
    opt_g = torch.optim.Adam([*s.parameters(), *r.parameters()], lr=o.lr, betas=betas)
    opt_ds = torch.optim.Adam(d_s.parameters(), lr=o.lr * o.d_s_lr_scale, betas=betas)
    opt_dr = torch.optim.Adam(d_r.parameters(), lr=o.lr * o.d_r_lr_scale, betas=betas)
    s_ema = None
    if o.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        s_ema = AveragedModel(unwrap(s), multi_avg_fn=get_ema_multi_avg_fn(o.ema), use_buffers=True)
    return GanNets(s, r, d_s, d_r, opt_g, opt_ds, opt_dr, s_ema)


def current_r(config: TrainConfig, step: int) -> float:
    """Sharpening factor at ``step``: linear from 1 to ``loss.r`` over ``r_warmup_steps``."""
    warm = config.loss.r_warmup_steps
    if warm <= 0 or step >= warm:
        return config.loss.r
    return 1.0 + (config.loss.r - 1.0) * step / warm


def _ihc_target(config: TrainConfig, x: torch.Tensor) -> torch.Tensor:
    return hematoxylin(x) if config.hematoxylin_cycle else x


def _as_rgb(config: TrainConfig, ihc: torch.Tensor) -> torch.Tensor:
    """R's output as S's RGB input; for a hematoxylin cycle, that channel alone rendered in RGB."""
    if not config.hematoxylin_cycle:
        return ihc
    h = (ihc + 1.0) / 2.0 * HEMATOXYLIN_MAX
    hed = torch.cat([h, torch.zeros_like(h), torch.zeros_like(h)], dim=1)
    return hed_to_rgb(torch.clamp(hed, min=0.0)) * 2.0 - 1.0


def _pseudo_losses(nets: GanNets, b: Batch, config: TrainConfig, r: float) -> dict[str, Any]:
    """Warm start: S fits the pseudo-masks, R rebuilds the tile from them."""
    logits = nets.s(b.x)
    bce = functional.binary_cross_entropy_with_logits(r * logits, b.pseudo)
    rec = l1(nets.r(b.pseudo), _ihc_target(config, b.x))
    w = config.loss
    return {"pseudo": bce, "cycle_ihc": rec, "total": w.pseudo * bce + w.cycle * rec}


def _generator_losses(nets: GanNets, b: Batch, config: TrainConfig, r: float) -> dict[str, Any]:
    w = config.loss
    x_a = hed_jitter(b.x, b.factors[0]) if w.jitter > 0 else b.x
    logits_a = r * nets.s(x_a)
    s_a = torch.sigmoid(logits_a)
    target = _ihc_target(config, x_a)
    fake_ihc = nets.r(b.mask)
    out: dict[str, Any] = {
        "cycle_ihc": l1(nets.r(s_a), target),
        "cycle_mask": l1(torch.sigmoid(r * nets.s(_as_rgb(config, fake_ihc))), b.mask),
        "gan_s": lsgan_g(nets.d_s(s_a)),
        "gan_r": lsgan_g(nets.d_r(fake_ihc)),
        "_s_a": s_a, "_fake_ihc": fake_ihc, "_target": target,
    }
    total = w.cycle * (out["cycle_ihc"] + out["cycle_mask"])
    total = total + w.gan_s * out["gan_s"] + w.gan_r * out["gan_r"]
    if w.consistency > 0:
        s_b = torch.sigmoid(r * nets.s(hed_jitter(b.x, b.factors[1])))
        out["consistency"] = l1(s_a, s_b)
        total = total + w.consistency * out["consistency"]
    if w.pseudo_anchor > 0:
        out["pseudo"] = functional.binary_cross_entropy_with_logits(logits_a, b.pseudo)
        total = total + w.pseudo_anchor * out["pseudo"]
    out["total"] = total
    return out


def _discriminator_step(nets: GanNets, b: Batch, g: dict[str, Any], step: int,
                        config: TrainConfig, amp: Any) -> dict[str, Any]:
    """Update D_S and D_R on real vs detached fake (each only every ``*_every`` steps)."""
    o = config.optim
    nets.opt_ds.zero_grad(set_to_none=True)
    nets.opt_dr.zero_grad(set_to_none=True)
    losses: dict[str, Any] = {}
    with amp:
        if step % o.d_s_every == 0:
            losses["d_s"] = lsgan_d(nets.d_s(b.mask), nets.d_s(g["_s_a"].detach()))
        if step % o.d_r_every == 0:
            fake = g["_fake_ihc"].detach()
            losses["d_r"] = lsgan_d(nets.d_r(g["_target"]), nets.d_r(fake))
    if not losses:
        return losses
    sum(losses.values()).backward()
    if "d_s" in losses:
        nets.opt_ds.step()
    if "d_r" in losses:
        nets.opt_dr.step()
    return losses


def train_step(nets: GanNets, b: Batch, *, step: int, config: TrainConfig,
               device_type: str = "cpu") -> dict[str, float]:
    """One optimisation step (S+R, then D_S and D_R); returns every loss term as a float.

    During the pseudo-mask warm start (``step < loss.pseudo_steps`` with ``loss.pseudo > 0``)
    only S and R are trained, on the pseudo-masks.
    """
    r = current_r(config, step)
    warm = config.loss.pseudo > 0 and step < config.loss.pseudo_steps
    use_amp = config.autocast == "bf16" or (config.autocast == "auto" and device_type == "cuda")
    amp = torch.autocast(device_type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    with amp:
        g = (_pseudo_losses if warm else _generator_losses)(nets, b, config, r)
    nets.opt_g.zero_grad(set_to_none=True)
    g["total"].backward()
    nets.opt_g.step()
    if nets.s_ema is not None:
        nets.s_ema.update_parameters(unwrap(nets.s))
    if not warm:
        g.update(_discriminator_step(nets, b, g, step, config, amp))
    return {k: float(v.detach()) for k, v in g.items() if not k.startswith("_")}
