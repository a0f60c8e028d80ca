"""The names of the segmentation methods and model test-time augmentations: one list each.

Light on purpose (no torch, no scikit-image), so the CLI's choices, the configuration checks,
the predictors and evaluation all read the same tuples.
"""

from __future__ import annotations

__all__ = ["BASELINES", "METHODS", "TTA_MODES"]

#: The paper's classical baselines: Otsu on the smoothed luminance, or on the deconvolved optical density.
BASELINES = ("threshold", "deconvolution")
#: Every method segment, evaluate and validate run: the trained UNet, then the baselines.
METHODS = ("unet", *BASELINES)
#: Model test-time augmentation: none, flips (4 views) or dihedral (8), averaged.
TTA_MODES = ("none", "flips", "dihedral")
