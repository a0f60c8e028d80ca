"""The names of the segmentation methods, model test-time augmentations and post-processing
devices: one list each.

Light on purpose (no torch, no scikit-image), so the CLI's choices, the configuration checks,
the predictors and evaluation all read the same tuples.
"""

from __future__ import annotations

__all__ = ["BASELINES", "DEVICES", "METHODS", "TTA_MODES", "parse_method"]

#: The paper's classical baselines: Otsu on the smoothed luminance, or on the deconvolved optical density.
BASELINES = ("threshold", "deconvolution")
#: Every method segment, evaluate and validate run: the trained UNet, then the baselines.
METHODS = ("unet", *BASELINES)
#: Model test-time augmentation: none, flips (4 views) or dihedral (8), averaged.
TTA_MODES = ("none", "flips", "dihedral")
#: Where post-processing runs (``postprocess_device``): a GPU when one is usable, the CPU, or a GPU.
DEVICES = ("auto", "cpu", "gpu")


def parse_method(method: str) -> str:
    """Validate a ``--method`` value."""
    if method not in METHODS:
        from nucflow.errors import InputError

        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method
