"""The unsupervised adversarial training of the method on Ray Train, and model export.

``train(...)`` runs the job; the configuration dataclasses load from ``nucflow/configs/train/*.yaml``.
"""

from nucflow.training._config import (
    DataConfig,
    LossConfig,
    NetworkConfig,
    OptimConfig,
    TrainConfig,
    load_train_config,
)
from nucflow.training._data import load_ihc, load_masks, pseudo_mask, sample_ihc, sample_masks
from nucflow.training._export import plot_losses, select_checkpoint
from nucflow.training._losses import hed_jitter, hematoxylin, l1, lsgan_d, lsgan_g, sharpen
from nucflow.training._train import TrainResult, export_run, train

__all__ = [
    "DataConfig",
    "LossConfig",
    "NetworkConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "export_run",
    "hed_jitter",
    "hematoxylin",
    "l1",
    "load_ihc",
    "load_masks",
    "load_train_config",
    "lsgan_d",
    "lsgan_g",
    "plot_losses",
    "pseudo_mask",
    "sample_ihc",
    "sample_masks",
    "select_checkpoint",
    "sharpen",
    "train",
]
