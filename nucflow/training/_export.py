"""Model selection among a run's checkpoints, export to safetensors + card, loss curves."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nucflow.errors import TrainingError
from nucflow.models import ModelCard, build_unet, save_model
from nucflow.training._config import TrainConfig

__all__ = ["export_checkpoint", "plot_losses", "select_checkpoint"]


def select_checkpoint(
    candidates: Sequence[tuple[Any, Mapping[str, float]]], *, config: TrainConfig
) -> tuple[Any, Mapping[str, float]]:
    """The checkpoint chosen by ``config.select`` among (checkpoint, metrics) pairs.

    "total": lowest mean total loss; "d_s": highest mean D_S loss (S's masks hardest to tell
    from the prior). Only checkpoints after ``select_after`` steps (and after the pseudo-mask
    warm start) compete, unless none is that late, in which case the last one is taken.
    """
    if not candidates:
        raise TrainingError("the run produced no checkpoint to export")
    after = max(config.select_after, config.loss.pseudo_steps if config.loss.pseudo > 0 else 0)
    late = [c for c in candidates if c[1].get("step", 0) >= after and "d_s" in c[1]]
    if not late:
        return max(candidates, key=lambda c: c[1].get("step", 0))
    if config.select == "d_s":
        return max(late, key=lambda c: c[1]["d_s"])
    return min(late, key=lambda c: c[1]["total"])


def export_checkpoint(
    state_s: Mapping[str, Any], path: Path, *, config: TrainConfig, steps: int,
    losses: Mapping[str, float], training: Mapping[str, Any],
) -> ModelCard:
    """Write S's weights ``state_s`` to ``path`` (.safetensors + .json card)."""
    card = ModelCard(
        **asdict(config.network.unet_spec()), r=config.loss.r, mpp=config.data.mpp, tile_size=config.data.crop,
        stain_profile=config.stain_profile, training=dict(training), steps=steps,
        mask_shrink_um=config.data.mask_shrink_um, head=config.data.head,
        losses={k: float(v) for k, v in losses.items() if k != "step"},
    )
    unet = build_unet(card, out_channels=card.out_channels)
    unet.load_state_dict(dict(state_s))
    return save_model(path, unet, card)


def plot_losses(csv_path: Path, png_path: Path) -> Path:
    """Loss curves (moving average over 25 steps) of a run's per-step CSV, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = np.array([int(r["step"]) for r in rows])
    for key in ("total", "cycle_ihc", "cycle_mask", "gan_s", "gan_r", "consistency", "pseudo",
                "d_s", "d_r"):
        pairs = [(s, float(r[key])) for s, r in zip(steps, rows, strict=True) if r.get(key)]
        if len(pairs) < 2:
            continue
        x, y = np.array(pairs).T
        k = min(25, len(y))
        ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), label=key)
    ax.set(xlabel="step", ylabel="loss (moving average)", yscale="log")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
