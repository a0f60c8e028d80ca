"""Networks (UNet, PatchGAN), the model card, and safe weights I/O.

``load_model(path).build()`` gives the inference-ready segmentator; ``default_model_path()``
points at the bundled default model when one ships.
"""

from nucflow.models._card import CARD_FORMAT, CARD_VERSION, HEADS, STAIN_PROFILES, ModelCard
from nucflow.models._io import (
    LoadedModel,
    Segmentator,
    default_model_path,
    load_model,
    save_model,
)
from nucflow.models._networks import PatchGAN, UNet, UNetSpec, build_unet, unet_widths

__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "HEADS",
    "STAIN_PROFILES",
    "LoadedModel",
    "ModelCard",
    "PatchGAN",
    "Segmentator",
    "UNet",
    "UNetSpec",
    "build_unet",
    "default_model_path",
    "load_model",
    "save_model",
    "unet_widths",
]
