"""Training configuration: frozen dataclasses loaded from ``nucflow/configs/train/*.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nucflow.config import (
    InvalidValue,
    at_least,
    below,
    between,
    check_fields,
    config_file,
    load_config,
    one_of,
    positive,
    setting,
)
from nucflow.errors import ConfigError
from nucflow.methods import BASELINES
from nucflow.models._card import STAIN_PROFILES
from nucflow.models._networks import NORMS, UNetSpec

__all__ = [
    "DataConfig",
    "LossConfig",
    "NetworkConfig",
    "OptimConfig",
    "TrainConfig",
    "load_train_config",
]


@dataclass(frozen=True)
class NetworkConfig(UNetSpec):
    """Widths and depths of S, R (UNets: the :class:`~nucflow.models.UNetSpec` fields ``ngf``,
    ``depth``, ``norm``, ``dropout``, ``dropout_blocks``, ``max_mult``) and D_S, D_R (PatchGANs);
    paper values by default."""

    ndf: int = setting(64, positive())
    d_layers: int = setting(3, positive())
    d_norm: str = setting("batch", one_of(*NORMS))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and the sharpening factor; a weight of 0 switches a term off (ablations).

    ``pseudo`` weights a label-free warm start: binary cross-entropy of S against
    colour-threshold pseudo-masks (Otsu on smoothed luminance) during the first
    ``pseudo_steps`` steps; R is then also fitted to rebuild the tile from its pseudo-mask.
    ``pseudo_anchor`` keeps that cross-entropy, with this weight, in the adversarial phase.
    ``cycle_target`` "hematoxylin": R rebuilds, and D_R judges, the tile's hematoxylin channel
    only, and S segments R's hematoxylin rendered alone in RGB (as the "her2" stain profile
    always does: :attr:`TrainConfig.hematoxylin_cycle`); "rgb": the whole tile (the paper).
    """

    r: float = setting(60.0, positive())
    r_warmup_steps: int = setting(0, at_least(0))
    gan_s: float = setting(1.0, at_least(0))
    gan_r: float = setting(1.0, at_least(0))
    cycle: float = setting(10.0, at_least(0))
    consistency: float = setting(1.0, at_least(0))
    jitter: float = setting(0.05, at_least(0))
    pseudo: float = setting(0.0, at_least(0))
    pseudo_steps: int = setting(0, at_least(0))
    pseudo_anchor: float = setting(0.0, at_least(0))
    cycle_target: str = setting("rgb", one_of("rgb", "hematoxylin"))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class DataConfig:
    """Working resolution, crops and augmentation of the IHC tiles and the mask prior.

    ``tile_mpp`` is the resolution assumed for tile folders without metadata and for
    scikit-image's IHC image; ``mask_mpp`` that of the mask prior (40x datasets: 0.25).
    ``scale_jitter`` rescales crops by a random factor in [1/(1+j), 1+j] (20x/40x variety).
    ``lowres_prob`` is the share of IHC crops S sees at ``lowres_factor`` times coarser
    resolution, brought back to ``mpp`` (down- then up-sampled): how a 20x scan looks at a 40x
    working resolution. Its pseudo-masks stay sharp.
    ``pseudo_method`` makes the warm start's pseudo-masks: "threshold" (Otsu on smoothed
    luminance) or "deconvolution" (Otsu on the log hematoxylin + DAB optical density).
    ``mask_shrink_um`` shrinks every nucleus of the prior masks and of the pseudo-masks by
    this many µm (touching nuclei then stand apart, so S learns to separate them); the model
    card records it and post-processing grows the labels back.
    ``interior_um`` > 0 gives S a second output, each nucleus's interior (the nucleus eroded by
    this many µm, also where two touch), learnt from the prior's instances and judged by D_S
    together with the mask; the model card's head is then "interior" (see ``HEADS``).
    ``pseudo_gate`` > 0 applies the stain gate (:func:`nucflow.stain.stain_gate`, this factor)
    to the pseudo-masks: their pixels more DAB than hematoxylin and fainter than that fraction
    of the pseudo-mask's median hematoxylin + DAB density are dropped, so the warm start does
    not teach S that light-brown cytoplasm is nucleus.
    ``pseudo_model`` (a model file, or "default" for the bundled model) replaces
    ``pseudo_method``: the pseudo-masks are the nuclei that model finds, as ``segment`` finds
    them (its card's resolution and stain profile), i.e. self-training from an earlier
    label-free round; ``mask_shrink_um`` and ``interior_um`` shrink its nuclei as they do the
    others', and ``pseudo_gate`` is not applied (the profile's own stain gate is).
    ``balance_sources`` draws each source (a tile folder, a slide, scikit-image's image)
    equally often instead of by area, so one large collection does not dominate.
    """

    mpp: float = setting(0.5, between(0, 100))
    crop: int = setting(256, positive())
    batch_size: int = setting(30, at_least(1))
    tile_mpp: float = setting(0.25, between(0, 100))
    mask_mpp: float = setting(0.25, between(0, 100))
    scale_jitter: float = setting(0.0, at_least(0))
    lowres_prob: float = setting(0.0, between(0, 1, closed=True))
    lowres_factor: float = setting(2.0, at_least(1))
    tiles_per_slide: int = setting(64, positive())
    skimage_ihc: bool = False
    pseudo_method: str = setting("threshold", one_of(*BASELINES))
    pseudo_gate: float = setting(0.0, at_least(0))
    pseudo_model: str = ""
    balance_sources: bool = False
    mask_shrink_um: float = setting(0.0, at_least(0), below(5))
    interior_um: float = setting(0.0, at_least(0), below(5))

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def head(self) -> str:
        """The model card's head (``nucflow.models.HEADS``) this data trains."""
        return "interior" if self.interior_um > 0 else "mask"


@dataclass(frozen=True)
class OptimConfig:
    """Adam for S+R, and for D_S, D_R; ``*_lr_scale`` and ``*_every`` (update every k-th
    step) handicap a discriminator that wins too early. ``ema`` > 0 keeps an exponential
    moving average of S's weights with this decay per step (``torch.optim.swa_utils``); the
    exported model is then that average at the selected checkpoint, not S itself."""

    lr: float = setting(2e-4, positive())
    beta1: float = setting(0.5, at_least(0), below(1))
    beta2: float = setting(0.999, at_least(0), below(1))
    d_r_lr_scale: float = setting(1.0, positive())
    d_r_every: int = setting(1, positive())
    d_s_lr_scale: float = setting(1.0, positive())
    d_s_every: int = setting(1, positive())
    ema: float = setting(0.0, at_least(0), below(1))

    def __post_init__(self) -> None:
        check_fields(self)


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
    stain_profile: str = setting("ki67", one_of(*STAIN_PROFILES))
    epochs: int = setting(600, positive())
    max_steps: int | None = setting(None, positive())
    checkpoint_every: int = setting(500, positive())
    log_every: int = setting(10, positive())
    select: str = setting("total", one_of("total", "d_s"))
    select_after: int = setting(0, at_least(0))
    seed: int = 0
    autocast: str = setting("auto", one_of("auto", "bf16", "off"))
    threads_per_worker: int | None = setting(None, positive())

    def __post_init__(self) -> None:
        check_fields(self)
        if self.data.crop % 2**self.network.depth:
            multiple = f"be a multiple of 2**network.depth ({2**self.network.depth})"
            raise InvalidValue("data.crop", self.data.crop, multiple, template="{key} {value!r} must {requirement}")

    @property
    def hematoxylin_cycle(self) -> bool:
        """R rebuilds, and D_R judges, the hematoxylin channel only: always for the "her2" stain
        profile, and for any profile with ``loss.cycle_target: hematoxylin``."""
        return self.stain_profile == "her2" or self.loss.cycle_target == "hematoxylin"


def load_train_config(path: str | Path | None = None, **overrides: object) -> TrainConfig:
    """Load a :class:`TrainConfig` from YAML (defaults = paper values), then ``overrides``.

    ``path`` is a file, or the name of a shipped one (``"cpu"``, ``"paper"``: ``nucflow/configs/train/``).
    """
    source = config_file(path, "train", what="training configuration") if path is not None else None
    config = load_config(TrainConfig, source, **overrides)
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{path} did not yield a training configuration")
    return config
