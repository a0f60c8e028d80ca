"""The networks of the method: a pix2pix-shaped UNet and a PatchGAN discriminator.

The UNet follows pix2pix's ``UnetGenerator`` ("unet_256" at depth 8, ngf 64): ``depth``
stride-2 4x4 down-convolutions, each mirrored by a stride-2 transposed convolution with a
skip connection, widths ``ngf * min(2**level, max_mult)`` and dropout in the innermost
non-innermost blocks. Depth and width are configuration so that a small variant trains on
a CPU. Inputs must have sides that are multiples of ``2**depth``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from nucflow.config import at_least, below, between, one_of, positive, setting

__all__ = ["NORMS", "PatchGAN", "UNet", "UNetSpec", "build_unet", "make_norm", "unet_widths"]

NORMS = ("batch", "instance", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer ``kind`` ("batch", "instance" or "none") for ``channels``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def unet_widths(*, ngf: int, depth: int, max_mult: int = 8) -> tuple[int, ...]:
    """Channel widths of the ``depth`` encoder levels, outermost first."""
    return tuple(ngf * min(2**level, max_mult) for level in range(depth))


@dataclass(frozen=True)
class UNetSpec:
    """The UNet's hyper-parameters: the one owner of their names, defaults (the paper's), ranges
    and derived sizes. The training configuration's ``network`` section
    (:class:`nucflow.training.NetworkConfig`) and the model card (:class:`nucflow.models.ModelCard`)
    are both UNetSpecs, so export copies nothing field by field; :func:`build_unet` builds one.
    """

    ngf: int = setting(64, positive())
    depth: int = setting(8, between(1, 16))
    norm: str = setting("batch", one_of(*NORMS))
    dropout: float = setting(0.5, at_least(0), below(1))
    dropout_blocks: int = setting(3, at_least(0))
    max_mult: int = setting(8, positive())

    @property
    def input_multiple(self) -> int:
        """Image sides given to the UNet must be multiples of this (``2**depth``)."""
        return 2**self.depth

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel widths of the UNet's encoder levels, outermost first."""
        return unet_widths(ngf=self.ngf, depth=self.depth, max_mult=self.max_mult)

    def unet_spec(self) -> UNetSpec:
        """Only the UNet's fields (of a training configuration or a model card)."""
        return UNetSpec(**{f.name: getattr(self, f.name) for f in fields(UNetSpec)})


def build_unet(spec: UNetSpec, in_channels: int = 3, out_channels: int = 1) -> UNet:
    """The UNet ``spec`` describes, randomly initialised: the segmentator S (3 -> 1 channels, the
    default) of a model card, or S and R of training."""
    unet = spec.unet_spec()
    return UNet(in_channels, out_channels, ngf=unet.ngf, depth=unet.depth, norm=unet.norm, dropout=unet.dropout,
                dropout_blocks=unet.dropout_blocks, max_mult=unet.max_mult)


class _Block(nn.Module):
    """One UNet level: down-convolution, the inner levels, up-convolution, skip concat."""

    def __init__(
        self,
        outer: int,
        inner: int,
        *,
        sub: nn.Module | None,
        norm: str,
        dropout: float,
        outermost_in: int | None = None,
        outermost_out: int | None = None,
    ) -> None:
        super().__init__()
        self.outermost = outermost_in is not None
        down_in = outermost_in if outermost_in is not None else outer
        up_in = inner if sub is None else inner * 2
        up_out = outermost_out if outermost_out is not None else outer
        down: list[nn.Module] = [] if self.outermost else [nn.LeakyReLU(0.2, True)]
        down.append(nn.Conv2d(down_in, inner, 4, 2, 1, bias=norm != "batch"))
        if sub is not None and not self.outermost:
            down.append(make_norm(norm, inner))
        up: list[nn.Module] = [nn.ReLU(True), nn.ConvTranspose2d(up_in, up_out, 4, 2, 1)]
        if not self.outermost:
            up.append(make_norm(norm, up_out))
            if dropout > 0:
                up.append(nn.Dropout(dropout))
        self.down = nn.Sequential(*down)
        self.sub = sub if sub is not None else nn.Identity()
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.sub(self.down(x)))
        return y if self.outermost else torch.cat([x, y], 1)


class UNet(nn.Module):
    """pix2pix UNet mapping (N, in_channels, H, W) to (N, out_channels, H, W), linear output.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and output images.
    ngf : int
        Width of the outermost level (64 in the paper).
    depth : int
        Number of stride-2 down-convolutions (8 in the paper); H and W must be
        multiples of ``2**depth``.
    norm : str
        "batch" (paper), "instance" or "none".
    dropout : float
        Dropout rate of the ``dropout_blocks`` blocks just outside the innermost one.
    dropout_blocks : int
        How many blocks carry dropout (pix2pix: 3 at depth 8, i.e. ``depth - 5``).
    max_mult : int
        Width cap as a multiple of ``ngf`` (8 in pix2pix).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        ngf: int = 64,
        depth: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
        dropout_blocks: int = 3,
        max_mult: int = 8,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"UNet depth must be at least 2, got {depth}")
        make_norm(norm, 1)
        widths = unet_widths(ngf=ngf, depth=depth, max_mult=max_mult)
        block: nn.Module | None = None
        for level in range(depth - 1, 0, -1):
            drop = dropout if 0 < depth - 1 - level <= dropout_blocks else 0.0
            block = _Block(widths[level - 1], widths[level], sub=block, norm=norm, dropout=drop)
        self.model = _Block(
            widths[0], widths[0], sub=block, norm=norm, dropout=0.0,
            outermost_in=in_channels, outermost_out=out_channels,
        )
        self.input_multiple = 2**depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchGAN(nn.Module):
    """pix2pix ``NLayerDiscriminator``: (N, in_channels, H, W) to patch scores (N, 1, h, w).

    ``n_layers`` stride-2 convolutions (3 in the paper) of widths ``ndf * min(2**i, 8)``,
    then a stride-1 convolution and a 1-channel output convolution; linear output (the
    least-squares GAN loss takes raw scores).
    """

    def __init__(
        self, in_channels: int, *, ndf: int = 64, n_layers: int = 3, norm: str = "batch"
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
        ]
        width = ndf
        for n in range(1, n_layers + 1):
            prev, width = width, ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(prev, width, 4, stride, 1, bias=norm != "batch"),
                make_norm(norm, width),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
