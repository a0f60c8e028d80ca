"""Loss terms of the method and the stain jitter, on torch tensors.

Images are (N, C, H, W) float32: IHC in [-1, 1], masks and S's output in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb_from_hed

from nucflow.stain import HED_FROM_RGB, MIN_TRANSMISSION

__all__ = [
    "HEMATOXYLIN_MAX",
    "hed_jitter",
    "hed_to_rgb",
    "hematoxylin",
    "l1",
    "lsgan_d",
    "lsgan_g",
    "rgb_to_hed",
    "sharpen",
]

_LOG_MIN = float(np.log(MIN_TRANSMISSION))
#: Hematoxylin concentration (scikit-image's ``rgb2hed`` units) mapped to 1 by :func:`hematoxylin`.
HEMATOXYLIN_MAX = 0.15


def lsgan_g(fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of a generator: mean((D(fake) - 1)**2)."""
    return torch.mean((fake_scores - 1.0) ** 2)


def lsgan_d(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss of a discriminator: (mean((D(real)-1)**2) + mean(D(fake)**2)) / 2."""
    return 0.5 * (torch.mean((real_scores - 1.0) ** 2) + torch.mean(fake_scores**2))


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference (the cycle and consistency losses)."""
    return torch.mean(torch.abs(a - b))


def sharpen(logits: torch.Tensor, r: float) -> torch.Tensor:
    """S's output: sigmoid(r * logits); large ``r`` pushes it to {0, 1} (the paper's r = 60)."""
    return torch.sigmoid(r * logits)


def rgb_to_hed(rgb01: torch.Tensor, *, clip: bool = True) -> torch.Tensor:
    """scikit-image's ``rgb2hed`` on (N, 3, H, W) RGB in [0, 1]: (N, 3, H, W) concentrations.

    ``clip=False`` keeps negative concentrations, so that :func:`hed_to_rgb` inverts it exactly.
    """
    od = torch.log(torch.clamp(rgb01, min=MIN_TRANSMISSION)) / _LOG_MIN
    matrix = torch.as_tensor(HED_FROM_RGB, dtype=rgb01.dtype, device=rgb01.device)
    hed = torch.einsum("nchw,cd->ndhw", od, matrix)
    return torch.clamp(hed, min=0.0) if clip else hed


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """scikit-image's ``hed2rgb``: concentrations (N, 3, H, W) to RGB in [0, 1]."""
    matrix = torch.as_tensor(rgb_from_hed, dtype=hed.dtype, device=hed.device)
    log_rgb = torch.einsum("ndhw,dc->nchw", hed * _LOG_MIN, matrix)
    return torch.clamp(torch.exp(log_rgb), 0.0, 1.0)


def hed_jitter(rgb: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Scale each hematoxylin/eosin/DAB concentration of IHC ``rgb`` ([-1, 1]) by ``factors``.

    ``factors`` is (N, 3), one factor per sample and H/E/D channel; the result is again in
    [-1, 1]. Concentrations are not clipped at 0 here, so factors of 1 give back the image.
    """
    hed = rgb_to_hed((rgb + 1.0) / 2.0, clip=False) * factors[:, :, None, None]
    return hed_to_rgb(hed) * 2.0 - 1.0


def hematoxylin(rgb: torch.Tensor) -> torch.Tensor:
    """The hematoxylin channel (N, 1, H, W) of IHC ``rgb`` ([-1, 1]), scaled to [-1, 1].

    Used by the "her2" stain profile, where R reconstructs and D_R judges this channel only.
    """
    h = rgb_to_hed((rgb + 1.0) / 2.0)[:, :1]
    return torch.clamp(h / HEMATOXYLIN_MAX, 0.0, 1.0) * 2.0 - 1.0
