"""Safe weights I/O (safetensors + JSON card) and the inference-ready segmentator."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
from nucflow.models._networks import build_unet

__all__ = [
    "DEFAULT_MODEL_DIR",
    "LoadedModel",
    "Segmentator",
    "build_network",
    "build_unet",
    "default_model_path",
    "ensemble_models",
    "load_model",
    "save_model",
]


def build_network(card: ModelCard) -> nn.Module:
    """The card's S, randomly initialised: one UNet, or for an ensemble (``members`` > 1) an
    ``nn.ModuleList`` of ``members`` UNets (weights ``0.<name>``, ``1.<name>``, ...)."""
    if card.members == 1:
        return build_unet(card, out_channels=card.out_channels)
    return nn.ModuleList(build_unet(card, out_channels=card.out_channels) for _ in range(card.members))


class Segmentator(nn.Module):
    """RGB (N, 3, H, W) float32 in [0, 1] -> nucleus probability (N, 1, H, W) in [0, 1].

    Normalises to [-1, 1], runs the UNet, multiplies the logits by ``r`` and applies the
    sigmoid; with several output channels (the "interior" head: mask and interior), the map
    is their mean. An ensemble (``unet`` an ``nn.ModuleList``) gives the mean of its members'
    maps. H and W must be multiples of the UNets' ``input_multiple``.

    The scaling, the sigmoid and the means run in float32 whatever the UNets computed in (bf16
    under autocast on a GPU or a CPU with native bf16): the map is then each member's own map,
    averaged, not a bf16 sum rounded again at every step, and the result is float32.
    """

    def __init__(self, unet: nn.Module, *, r: float) -> None:
        super().__init__()
        self.unet = unet
        self.r = float(r)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb * 2.0 - 1.0
        members = self.unet if isinstance(self.unet, nn.ModuleList) else (self.unet,)
        prob = torch.sigmoid(self.r * members[0](x).float())
        for member in members[1:]:
            prob = prob + torch.sigmoid(self.r * member(x).float())
        prob = prob / len(members)
        return prob if prob.shape[1] == 1 else prob.mean(dim=1, keepdim=True)


@dataclass(frozen=True)
class LoadedModel:
    """A validated model: its card and its UNet weights (CPU tensors)."""

    card: ModelCard
    state_dict: dict[str, torch.Tensor]
    path: Path

    def build(self, device: str | torch.device = "cpu") -> Segmentator:
        """The segmentator in eval mode on ``device`` (see :class:`Segmentator`)."""
        network = build_network(self.card)
        _load_state(network, self.state_dict, self.path)
        return Segmentator(network, r=self.card.r).to(device).eval()


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
    _load_state(build_network(card), state, weights)
    return model


#: Card fields that only describe a model's training; every other field says how the model is
#: applied, and must agree between the members of an ensemble.
_RECORD_FIELDS = frozenset({"training", "steps", "losses", "software_version", "model_id", "members"})


def ensemble_models(paths: Sequence[str | Path], out: str | Path) -> ModelCard:
    """Write to ``out`` one model whose probability map is the mean of the maps of the models
    at ``paths`` (a deep ensemble: the same configuration trained with different seeds).

    The members must be single models applied the same way (every card field but the training
    record agrees: architecture, widths, ``r``, µm/px, head, stain profile, ...) and distinct.
    The ensemble's card records each member's ``model_id``, steps and training. Returns the
    card as written. Raises :class:`ModelError` naming the model and the field that disagrees.
    """
    if len(paths) < 2:
        raise ModelError(f"an ensemble needs two or more models; got {len(paths)}")
    models = [load_model(p) for p in paths]
    first = models[0]
    seen: dict[str, Path] = {}
    for m in models:
        if m.card.members != 1:
            raise ModelError(f"model {m.path} is itself an ensemble of {m.card.members}; list its members instead")
        if m.card.model_id in seen:
            raise ModelError(f"models {seen[m.card.model_id]} and {m.path} are the same weights "
                             f"(model_id {m.card.model_id}); an ensemble needs distinct members")
        seen[m.card.model_id] = m.path
        for f in dataclasses.fields(ModelCard):
            mine, theirs = getattr(m.card, f.name), getattr(first.card, f.name)
            if f.name not in _RECORD_FIELDS and mine != theirs:
                raise ModelError(f"models {first.path} and {m.path} differ in {f.name} ({theirs!r} against "
                                 f"{mine!r}); the members of an ensemble must be applied the same way")
    members = nn.ModuleList(m.build().unet for m in models)
    record = {"ensemble": [{"model_id": m.card.model_id, "steps": m.card.steps, "training": dict(m.card.training)}
                           for m in models]}
    card = dataclasses.replace(first.card, members=len(models), steps=max(m.card.steps for m in models),
                               losses={}, training=record, model_id="")
    return save_model(out, members, card)


def _read_card(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"model card {path} is not text (binary or corrupt); it must be a JSON model card") from None
    except OSError as exc:
        raise ModelError(f"model card {path} cannot be read: {exc.strerror or exc}") from None
