"""Training configuration: frozen dataclasses loaded from ``nucflow/configs/train/*.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nucflow.config import config_file, load_config
from nucflow.errors import ConfigError

__all__ = [
    "DataConfig",
    "LossConfig",
    "NetworkConfig",
    "OptimConfig",
    "TrainConfig",
    "load_train_config",
]


@dataclass(frozen=True)
class NetworkConfig:
    """Widths and depths of S, R (UNets) and D_S, D_R (PatchGANs); paper values by default."""

    ngf: int = 64
    depth: int = 8
    norm: str = "batch"
    dropout: float = 0.5
    dropout_blocks: int = 3
    max_mult: int = 8
    ndf: int = 64
    d_layers: int = 3
    d_norm: str = "batch"


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and the sharpening factor; a weight of 0 switches a term off (ablations).

    ``pseudo`` weights a label-free warm start: binary cross-entropy of S against
    colour-threshold pseudo-masks (Otsu on smoothed luminance) during the first
    ``pseudo_steps`` steps; R is then also fitted to rebuild the tile from its pseudo-mask.
    ``pseudo_anchor`` keeps that cross-entropy, with this weight, in the adversarial phase.
    """

    r: float = 60.0
    r_warmup_steps: int = 0
    gan_s: float = 1.0
    gan_r: float = 1.0
    cycle: float = 10.0
    consistency: float = 1.0
    jitter: float = 0.05
    pseudo: float = 0.0
    pseudo_steps: int = 0
    pseudo_anchor: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """Working resolution, crops and augmentation of the IHC tiles and the mask prior.

    ``tile_mpp`` is the resolution assumed for tile folders without metadata and for
    scikit-image's IHC image; ``mask_mpp`` that of the mask prior (40x datasets: 0.25).
    ``scale_jitter`` rescales crops by a random factor in [1/(1+j), 1+j] (20x/40x variety).
    ``pseudo_method`` makes the warm start's pseudo-masks: "threshold" (Otsu on smoothed
    luminance) or "deconvolution" (Otsu on the log hematoxylin + DAB optical density).
    ``mask_shrink_um`` shrinks every nucleus of the prior masks and of the pseudo-masks by
    this many µm (touching nuclei then stand apart, so S learns to separate them); the model
    card records it and post-processing grows the labels back.
    ``balance_sources`` draws each source (a tile folder, a slide, scikit-image's image)
    equally often instead of by area, so one large collection does not dominate.
    """

    mpp: float = 0.5
    crop: int = 256
    batch_size: int = 30
    tile_mpp: float = 0.25
    mask_mpp: float = 0.25
    scale_jitter: float = 0.0
    tiles_per_slide: int = 64
    skimage_ihc: bool = False
    pseudo_method: str = "threshold"
    balance_sources: bool = False
    mask_shrink_um: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    """Adam for S+R, and for D_S, D_R; ``*_lr_scale`` and ``*_every`` (update every k-th
    step) handicap a discriminator that wins too early."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    d_r_lr_scale: float = 1.0
    d_r_every: int = 1
    d_s_lr_scale: float = 1.0
    d_s_every: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    ``epochs`` counts passes over the IHC tile pool of the first worker (pool tiles /
    (batch_size * workers) steps each); ``max_steps``, when set, wins. Model selection
    (``select``): "total" = lowest mean total generator loss (the paper), "d_s" = highest
    mean D_S loss (S's masks hardest to tell from real ones), both after ``select_after``
    steps. ``autocast``: "auto" (bf16 on GPU only), "bf16" or "off".
    """

    network: NetworkConfig = field(default_factory=NetworkConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stain_profile: str = "ki67"
    epochs: int = 600
    max_steps: int | None = None
    checkpoint_every: int = 500
    log_every: int = 10
    select: str = "total"
    select_after: int = 0
    seed: int = 0
    autocast: str = "auto"
    threads_per_worker: int | None = None

    def __post_init__(self) -> None:
        choices = {"select": ("total", "d_s"), "autocast": ("auto", "bf16", "off"),
                   "stain_profile": ("ki67", "her2"),
                   "data.pseudo_method": ("threshold", "deconvolution")}
        for name, allowed in choices.items():
            value = getattr(self.data, name[5:]) if name.startswith("data.") else getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.data.crop % 2**self.network.depth:
            raise ValueError(
                f"data.crop {self.data.crop} must be a multiple of 2**network.depth "
                f"({2**self.network.depth})"
            )
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be at least 1")


def load_train_config(path: str | Path | None = None, **overrides: object) -> TrainConfig:
    """Load a :class:`TrainConfig` from YAML (defaults = paper values), then ``overrides``.

    ``path`` is a file, or the name of a shipped one (``"cpu"``, ``"paper"``: ``nucflow/configs/train/``).
    """
    source = config_file(path, "train", what="training configuration") if path is not None else None
    config = load_config(TrainConfig, source, **overrides)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{path} did not yield a training configuration")
    return config
