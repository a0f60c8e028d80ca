"""How a method runs on an image: the steps ``segment`` takes on a slide, in memory.

One owner for what a method *is* at run time, shared by ``segment`` (slides, tiled on Ray,
post-processed in Dask blocks) and ``evaluate`` (annotated tiles, in memory):

- :func:`method_spec`: the method and its working resolution (the model card's µm/px for
  ``unet`` unless ``model_mpp`` overrides it; ``baseline_mpp`` for the baselines);
- :func:`fit_params`: the baselines' Otsu threshold, fitted once per image on the tissue of
  its thumbnail;
- :func:`segment_image`: tissue, tile grid, prediction of the tiles that touch tissue, and the
  stain profile's post-processing at the working resolution, as ``segment`` does. The slide
  pipeline's stitched map and blocked labels are tested equal to these in-memory steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nucflow.errors import ModelError
from nucflow.inference.predictors import MethodSpec
from nucflow.inference.tiled import auto_tile_size, predict_tiles
from nucflow.pipeline.config import SegmentConfig, TissueConfig
from nucflow.slide import Slide, tile_grid, tissue_mask
from nucflow.slide.reader import array_slide

__all__ = [
    "DEFAULT_STAIN_PROFILE", "ImageSegmentation", "adapt_profile", "build_predictor", "find_tissue",
    "fit_params", "input_multiple", "interior_markers", "mask_shrink_um", "method_profile", "method_spec",
    "positive_calls", "postprocess_profile", "resample_labels", "segment_image", "with_stain_profile",
    "work_grid",
]

log = logging.getLogger(__name__)

#: The stain profile of the baselines, which have no model card to name one.
DEFAULT_STAIN_PROFILE = "ki67"


def method_spec(config: SegmentConfig) -> MethodSpec:
    """The method of ``config`` with its working resolution (and, for ``unet``, the loaded model)."""
    if config.method != "unet":
        return MethodSpec(config.method, mpp=config.baseline_mpp, sigma=config.baseline_sigma)
    from nucflow.models import default_model_path, load_model

    path = config.model or default_model_path()
    if path is None:
        raise ModelError("no model given and no bundled default model; pass --model PATH or --method threshold")
    loaded = load_model(path)
    return MethodSpec("unet", mpp=config.model_mpp or loaded.card.mpp, model=loaded, tta=config.inference.tta)


def with_stain_profile(config: SegmentConfig, spec: MethodSpec) -> SegmentConfig:
    """``config`` with its stain profile named: the model card's unless one was given, so a HER2
    model gets HER2 post-processing without flags; :data:`DEFAULT_STAIN_PROFILE` for the baselines.

    A profile given explicitly (``--stain``, or ``stain_profile`` in a segment YAML) that names
    another stain than the model card wins, with a warning that says so: the user chose it.
    """
    card = spec.model.card.stain_profile if spec.model is not None else None
    if config.stain_profile is None:
        return replace(config, stain_profile=card or DEFAULT_STAIN_PROFILE)
    if card is not None:
        from nucflow.errors import ConfigError
        from nucflow.postprocess import load_stain_profile

        try:
            chosen = load_stain_profile(config.stain_profile).stain_profile
        except ConfigError:
            return config  # reported by the pre-flight check
        if chosen != card:
            log.warning("stain profile %r (%s) overrides the model card's %r (model %s)",
                        chosen, config.stain_profile, card, spec.model_id)
    return config


def mask_shrink_um(spec: MethodSpec) -> float:
    """How far (µm) inside each nucleus' edge the model outlines it at the working resolution.

    The card's ``mask_shrink_um`` holds at the card's µm/px: the model learned to shrink
    nuclei by a number of its own pixels, so run at another resolution (``model_mpp``) it
    shrinks them by that many pixels of the new resolution. 0 for the baselines.
    """
    if spec.model is None:
        return 0.0
    card = spec.model.card
    return float(card.mask_shrink_um) * spec.mpp / card.mpp


def interior_markers(spec: MethodSpec) -> bool:
    """Whether the method's map comes from an "interior" head (the model card's ``head``), whose
    interiors are the watershed markers. False for the baselines."""
    return spec.model is not None and spec.model.card.head == "interior"


def postprocess_profile(config: SegmentConfig, *, shrink_um: float = 0.0, interior: bool = False) -> Any:
    """The stain profile of ``config`` (see :func:`with_stain_profile`), growing labels back by
    ``shrink_um`` more (see :func:`mask_shrink_um`), with markers from interiors when ``interior``
    (see :func:`interior_markers`)."""
    from nucflow.postprocess import load_stain_profile

    return adapt_profile(load_stain_profile(config.stain_profile or DEFAULT_STAIN_PROFILE),
                         shrink_um=shrink_um, interior=interior)


def adapt_profile(profile: Any, *, shrink_um: float = 0.0, interior: bool = False) -> Any:
    """``profile`` growing labels back by ``shrink_um`` (when not 0) on top of the profile's own
    ``expand_um``, and taking its watershed markers from interiors when ``interior``: the two
    settings a model card decides. The two growths add: the card's undoes the shrink the model
    learnt, the profile's is the post-processing chosen on the validation table."""
    profile = replace(profile, expand_um=profile.expand_um + shrink_um) if shrink_um else profile
    return replace(profile, interior_markers=True) if interior else profile


def method_profile(config: SegmentConfig, spec: MethodSpec) -> Any:
    """The post-processing profile ``segment`` uses for ``spec``: ``config``'s stain profile,
    grown by the model card's shrink and with interior markers for an "interior" head."""
    return postprocess_profile(config, shrink_um=mask_shrink_um(spec), interior=interior_markers(spec))


def build_predictor(spec: MethodSpec, config: SegmentConfig, *, device: str = "cpu") -> Any:
    """The predictor of ``spec`` with ``config``'s inference numerics (autocast, memory format)."""
    return spec.build(device=device, amp=config.inference.amp, channels_last=config.inference.channels_last)


def input_multiple(spec: MethodSpec) -> int:
    """Tile sides must be a multiple of this (the UNet's downsampling; 32 for the baselines)."""
    return int(spec.model.card.input_multiple) if spec.model is not None else 32


def work_grid(shape: tuple[int, int], spec: MethodSpec, config: SegmentConfig, tissue: np.ndarray) -> Any:
    """The model tiles of an image of ``shape`` working-resolution pixels that touch ``tissue``
    (``inference.tile_size`` or :func:`auto_tile_size`, ``inference.margin``)."""
    margin = config.inference.margin
    size = config.inference.tile_size or auto_tile_size(input_multiple(spec), margin=margin)
    return tile_grid(shape, tile_size=size, margin=margin, tissue=tissue)


def find_tissue(slide: Slide, config: TissueConfig) -> tuple[np.ndarray, float, np.ndarray]:
    """The slide's thumbnail (uint8 RGB), its µm/px, and its tissue mask (bool), as ``config`` sets."""
    thumb, thumb_mpp = slide.thumbnail(max_size=config.thumbnail_size)
    mask = tissue_mask(
        thumb, mpp=thumb_mpp, min_saturation=config.min_saturation,
        max_luminance=config.max_luminance, min_area_um2=config.min_area_um2,
    )
    return thumb, thumb_mpp, mask


def fit_params(spec: MethodSpec, thumb: np.ndarray, tissue: np.ndarray, profile: Any = None) -> dict[str, Any]:
    """Per-image predictor parameters: the baselines' Otsu threshold, fitted on the thumbnail's
    tissue; for a model, the stain ``profile``'s gate as ``[stain_gate, threshold]`` when it sets
    one (applied per tile core: :func:`nucflow.inference.tiled.predict_tiles`)."""
    if spec.method == "unet":
        factor = float(getattr(profile, "stain_gate", 0.0))
        return {"stain_gate": [factor, float(profile.threshold)]} if factor else {}
    if not tissue.any():
        return {}
    from nucflow.inference.baselines import fit_threshold

    return {"threshold": float(fit_threshold(thumb, method=spec.method, sigma=spec.sigma, mask=tissue))}


@dataclass(frozen=True)
class ImageSegmentation:
    """Labels of one image at the working resolution ``mpp``, with the RGB they were read from."""

    labels: np.ndarray  # (rows, cols) int32, 0 = background
    probability: np.ndarray  # (rows, cols) float32
    rgb: np.ndarray  # (rows, cols, 3) uint8 at ``mpp``
    mpp: float
    stain_vectors: Any = None  # the profile's, estimated on the image's thumbnail if "macenko"

    def positive(self, profile: Any) -> dict[int, bool]:
        """Each nucleus' DAB call with the stain profile's rule, from the working-resolution RGB."""
        if self.stain_vectors is not None:
            profile = replace(profile, stain_vectors=self.stain_vectors)
        return positive_calls(self.rgb, self.labels, profile)

    def labels_at(self, shape: tuple[int, int], mpp: float) -> np.ndarray:
        """The labels on the pixel grid of the original image (``shape`` at ``mpp`` µm/px), nearest."""
        return resample_labels(self.labels, shape, scale=mpp / self.mpp)


def segment_image(
    rgb: np.ndarray, *, mpp: float, spec: MethodSpec, config: SegmentConfig, predictor: Any = None,
    batch_size: int = 4, profile: Any = None,
) -> ImageSegmentation:
    """Run ``spec`` on an in-memory RGB image at ``mpp`` µm/px the way ``segment`` runs it on a slide.

    ``predictor`` (built from ``spec`` when None) may be passed to reuse one across images;
    ``profile`` replaces the post-processing profile ``segment`` would use (:func:`postprocess_profile`).
    """
    from nucflow.postprocess import label_nuclei

    if config.stain_profile is None:
        config = with_stain_profile(config, spec)
    slide = array_slide(rgb, mpp=mpp)
    thumb, _, tissue = find_tissue(slide, config.tissue)
    if profile is None:
        profile = method_profile(config, spec)
    params = fit_params(spec, thumb, tissue, profile)
    shape = slide.shape_at(spec.mpp)
    work = slide.read(mpp=spec.mpp, row=0, col=0, rows=shape[0], cols=shape[1])
    grid = work_grid(shape, spec, config, tissue)
    if predictor is None:
        predictor = build_predictor(spec, config)

    def read(row: int, col: int, rows: int, cols: int) -> np.ndarray:
        return slide.read(mpp=spec.mpp, row=row, col=col, rows=rows, cols=cols)

    prob = np.zeros(shape, np.float32)
    for tile, core in predict_tiles(read, grid.tiles, predictor, batch_size=batch_size, params=params):
        prob[tile.row : tile.row + tile.rows, tile.col : tile.col + tile.cols] = core
    labels = label_nuclei(prob, mpp=spec.mpp, config=profile)
    from nucflow.stain import resolve_stain_vectors

    vectors = resolve_stain_vectors(profile.stain_vectors, thumb, tissue)
    return ImageSegmentation(labels=labels, probability=prob, rgb=work, mpp=spec.mpp, stain_vectors=vectors)


def positive_calls(rgb: np.ndarray, labels: np.ndarray, profile: Any) -> dict[int, bool]:
    """Object id -> DAB-positive, by the stain profile's rule on the nucleus' mean ODs (its
    ``stain_vectors``; "macenko" estimated on ``rgb``)."""
    from scipy import ndimage

    from nucflow.postprocess import stain_od

    ids = np.unique(labels[labels > 0])
    if len(ids) == 0:
        return {}
    from nucflow.stain import resolve_stain_vectors

    hematoxylin, dab = stain_od(rgb, resolve_stain_vectors(profile.stain_vectors, rgb))
    calls = profile.positive(ndimage.mean(dab, labels=labels, index=ids),
                             ndimage.mean(hematoxylin, labels=labels, index=ids))
    return {int(i): bool(c) for i, c in zip(ids, calls, strict=True)}


def resample_labels(labels: np.ndarray, shape: tuple[int, int], *, scale: float) -> np.ndarray:
    """A label image on another pixel grid of the same region, nearest neighbour.

    ``scale`` is the size of a target pixel in source pixels (target µm/px over source µm/px);
    pixel centres are aligned as :meth:`nucflow.slide.Slide.read` aligns them.
    """
    if labels.shape == tuple(shape) and abs(scale - 1.0) < 1e-9:
        return labels
    rows = _nearest(labels.shape[0], shape[0], scale)
    cols = _nearest(labels.shape[1], shape[1], scale)
    return labels[np.ix_(rows, cols)]


def _nearest(source: int, target: int, scale: float) -> np.ndarray:
    centres = (np.arange(target) + 0.5) * scale
    return np.clip(np.floor(centres).astype(np.int64), 0, source - 1)
