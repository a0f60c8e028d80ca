"""Networks (UNet, PatchGAN), the model card, and safe weights I/O.

``load_model(path).build()`` gives the inference-ready segmentator; ``default_model_path()``
points at the bundled default model when one ships. The names are imported on first use
(:mod:`nucflow._lazy`): ``default_model_path`` and the model files' ids need no torch.
"""

from typing import TYPE_CHECKING

from nucflow._lazy import lazy_exports

if TYPE_CHECKING:
    from nucflow.models._card import CARD_FORMAT, CARD_VERSION, HEADS, STAIN_PROFILES, ModelCard
    from nucflow.models._files import default_model_path
    from nucflow.models._io import LoadedModel, Segmentator, build_network, ensemble_models, load_model, save_model
    from nucflow.models._networks import PatchGAN, UNet, UNetSpec, build_unet, unet_widths

_EXPORTS = {
    **dict.fromkeys(("CARD_FORMAT", "CARD_VERSION", "HEADS", "STAIN_PROFILES", "ModelCard"), "nucflow.models._card"),
    "default_model_path": "nucflow.models._files",
    **dict.fromkeys(("LoadedModel", "Segmentator", "build_network", "ensemble_models", "load_model", "save_model"),
                    "nucflow.models._io"),
    **dict.fromkeys(("PatchGAN", "UNet", "UNetSpec", "build_unet", "unet_widths"), "nucflow.models._networks"),
}

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
    "build_network",
    "build_unet",
    "default_model_path",
    "ensemble_models",
    "load_model",
    "save_model",
    "unet_widths",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
