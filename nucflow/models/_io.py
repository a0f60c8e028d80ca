"""Safe weights I/O (safetensors + JSON card) and the inference-ready segmentator."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from nucflow import __version__
from nucflow.errors import ModelError
from nucflow.models._card import ModelCard, without_paths
from nucflow.models._files import DEFAULT_MODEL_DIR, default_model_path, file_id, model_files
from nucflow.models._networks import UNet, build_unet

__all__ = [
    "DEFAULT_MODEL_DIR",
    "LoadedModel",
    "Segmentator",
    "build_unet",
    "default_model_path",
    "load_model",
    "save_model",
]


class Segmentator(nn.Module):
    """RGB (N, 3, H, W) float32 in [0, 1] -> nucleus probability (N, 1, H, W) in [0, 1].

    Normalises to [-1, 1], runs the UNet, multiplies the logits by ``r`` and applies the
    sigmoid; with several output channels (the "interior" head: mask and interior), the map
    is their mean. H and W must be multiples of ``unet.input_multiple``.
    """

    def __init__(self, unet: UNet, *, r: float) -> None:
        super().__init__()
        self.unet = unet
        self.r = float(r)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(self.r * self.unet(rgb * 2.0 - 1.0))
        return prob if prob.shape[1] == 1 else prob.mean(dim=1, keepdim=True)


@dataclass(frozen=True)
class LoadedModel:
    """A validated model: its card and its UNet weights (CPU tensors)."""

    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    path: Path

    def build(self, device: str | torch.device = "cpu") -> Segmentator:
        """The segmentator in eval mode on ``device`` (see :class:`Segmentator`)."""
        unet = build_unet(self.card, out_channels=self.card.out_channels)
        _load_state(unet, self.state_dict, self.path)
        return Segmentator(unet, r=self.card.r).to(device).eval()


def _load_state(unet: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(
            f"weights {path} do not match the architecture in their model card: {first}"
        ) from None


def save_model(path: str | Path, unet: nn.Module, card: ModelCard) -> ModelCard:
    """Write ``unet``'s weights to ``path`` (.safetensors) and its card beside it (.json).

    ``path`` may also be a folder, which then holds ``model.safetensors`` + ``model.json``.
    Returns the card as written (``model_id`` and ``software_version`` filled in, and no
    machine path in its training record: see :func:`nucflow.models._card.without_paths`).
    """
    weights, card_path = model_files(Path(path), creating=True)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(weights), metadata={"format": card.format})
    written = dataclasses.replace(card, model_id=file_id(weights), software_version=__version__,
                                  training=without_paths(card.training))
    card_path.write_text(written.to_json() + "\n")
    return written


def load_model(path: str | Path) -> LoadedModel:
    """Load and validate a model: a .safetensors file with its ``.json`` card, or a folder.

    Raises :class:`ModelError` when a file is missing or corrupt, the card is not
    understood, the weights hash differs from the card's ``model_id``, or the weights do
    not fit the card's architecture.
    """
    weights, card_path = model_files(Path(path))
    for p, what in ((weights, "weights"), (card_path, "model card")):
        if not p.is_file():
            raise ModelError(f"model {what} {p} does not exist")
    card = ModelCard.from_json(_read_card(card_path), source=str(card_path))
    if card.model_id and card.model_id != file_id(weights):
        raise ModelError(
            f"weights {weights} do not match their model card {card_path} (model_id "
            f"{card.model_id} != file hash {file_id(weights)}): the files were mixed up or altered"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"weights {weights} are corrupt or not safetensors: {exc}") from None
    model = LoadedModel(card=card, state_dict=state, path=weights)
    _load_state(build_unet(card, out_channels=card.out_channels), state, weights)
    return model


def _read_card(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"model card {path} is not text (binary or corrupt); it must be a JSON model card") from None
    except OSError as exc:
        raise ModelError(f"model card {path} cannot be read: {exc.strerror or exc}") from None
