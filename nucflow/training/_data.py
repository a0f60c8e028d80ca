"""Training data: IHC tiles from slides and folders, the unpaired mask prior, augmentation.

Everything is held in memory at the working resolution (the pools here are small: a few
slides' tissue tiles and a few thousand masks); each batch is cut from the pools with a
generator seeded by (seed, rank, step), so a resumed run draws the same batches.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import color, filters, io, transform

from nucflow.errors import SlideError, TrainingError
from nucflow.training._config import DataConfig

__all__ = [
    "IMAGE_SUFFIXES",
    "IhcImage",
    "find_images",
    "split_mpp",
    "teacher_labels",
    "load_ihc",
    "load_masks",
    "pseudo_mask",
    "sample_ihc",
    "sample_masks",
]

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_WHOLE_SLIDE_MAX = 4096 * 4096


@dataclass(frozen=True)
class IhcImage:
    """An IHC image at the working resolution with its label-free pseudo-mask.

    ``rgb`` is (rows, cols, 3) uint8, ``pseudo`` (rows, cols) bool. ``group`` names the
    image's origin (a tile's folder, a slide, scikit-image) for balanced sampling.
    """

    rgb: np.ndarray
    pseudo: np.ndarray
    source: str
    group: str = ""


def split_mpp(path: str | Path) -> tuple[Path, float | None]:
    """``"DIR@0.5"`` -> (DIR, 0.5): a tile folder (or file) with the µm/px of its images.

    Without ``@MPP`` the resolution is None (the configuration's ``tile_mpp`` applies).
    """
    text = str(path)
    head, sep, tail = text.rpartition("@")
    if not sep:
        return Path(text), None
    try:
        mpp = float(tail)
    except ValueError:
        return Path(text), None
    if not (math.isfinite(mpp) and mpp > 0):
        raise TrainingError(f"tile path {text}: the resolution after '@' must be a positive µm/px, got {tail}")
    return Path(head), mpp


def find_images(paths: Sequence[str | Path], *, what: str) -> list[Path]:
    """Image files in ``paths`` (files or folders, sorted); none found is a TrainingError.

    A path may end in ``@MPP`` (see :func:`split_mpp`); each file found keeps that suffix.
    """
    found: list[Path] = []
    for given in paths:
        path, mpp = split_mpp(given)
        if mpp is not None:
            found += [Path(f"{p}@{mpp:g}") for p in find_images([path], what=what)]
            continue
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise TrainingError(f"{what} path {path} does not exist")
    return found


def pseudo_mask(rgb: np.ndarray, method: str = "threshold", *, shrink_px: int = 0, mpp: float = 0.5,
                gate: float = 0.0) -> np.ndarray:
    """Label-free nuclei guess, holes filled: ``rgb`` (rows, cols, 3) uint8 -> (rows, cols) bool.

    "threshold": Otsu on the Gaussian-smoothed luminance (dark = nucleus); "deconvolution":
    the paper's deconvolution baseline (Otsu on the log hematoxylin + DAB optical density).
    ``gate`` > 0: the stain gate with that factor (:func:`nucflow.stain.stain_gate`, the
    guess as the nucleus pixels) drops the guess's faint brown pixels, after hole filling.
    With ``shrink_px``, touching blobs are split as post-processing splits them (watershed of
    the distance transform at ``mpp``) and every piece is shrunk by that many pixels.
    """
    fg = _pseudo_foreground(rgb, method)
    if gate > 0:
        from nucflow.stain import stain_gate

        fg &= stain_gate(rgb, fg.astype(np.float32), factor=gate, threshold=0.5)
    if shrink_px <= 0:
        return fg
    from nucflow.postprocess import load_stain_profile
    from nucflow.postprocess._label import split_touching

    labels = split_touching(fg, px=load_stain_profile("ki67").in_pixels(mpp))
    return shrink_labels(labels, shrink_px) > 0


def shrink_labels(labels: np.ndarray, shrink_px: int) -> np.ndarray:
    """Every label eroded by a disk of ``shrink_px`` px, also where two labels touch."""
    from nucflow.postprocess._label import erode_labels

    return erode_labels(labels, shrink_px) if shrink_px > 0 else labels


def _pseudo_foreground(rgb: np.ndarray, method: str) -> np.ndarray:
    if method == "deconvolution":
        from nucflow.inference.baselines import baseline_probability

        fg = baseline_probability(rgb, method="deconvolution") > 0.5
    else:
        gray = filters.gaussian(color.rgb2gray(rgb), sigma=1.0)
        fg = gray < filters.threshold_otsu(gray)
    return ndimage.binary_fill_holes(fg)


def _rescale_rgb(rgb: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return rgb
    out = transform.rescale(rgb, scale, channel_axis=2, anti_aliasing=scale < 1, order=1)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def _teacher(model: str) -> tuple[Any, Any, Any]:
    """(segment config, method spec, predictor) of a pseudo-mask model, built once per process."""
    from dataclasses import replace

    from nucflow.errors import NucflowError
    from nucflow.pipeline import load_segment_config
    from nucflow.pipeline.image import build_predictor, method_spec

    config = replace(load_segment_config(), method="unet", model=None if model == "default" else model)
    try:
        spec = method_spec(config)
    except NucflowError as exc:
        raise TrainingError(f"data.pseudo_model {model!r}: {exc}; give a model file written by "
                            "nucflow train (or 'default', the bundled model)") from None
    return config, spec, build_predictor(spec, config)


def teacher_labels(rgb: np.ndarray, model: str, *, mpp: float) -> np.ndarray:
    """The nuclei ``model`` ("default": the bundled one) finds in ``rgb`` (at ``mpp`` µm/px) as
    ``segment`` finds them, as labels at ``mpp``: pseudo-masks for self-training."""
    from nucflow.pipeline.image import resample_labels, segment_image

    config, spec, predictor = _teacher(model)
    seg = segment_image(rgb, mpp=mpp, spec=spec, config=config, predictor=predictor)
    return resample_labels(seg.labels, rgb.shape[:2], scale=mpp / seg.mpp)


def _pseudo_masks(rgb: np.ndarray, config: DataConfig, shrinks: Sequence[int]) -> list[np.ndarray]:
    """The image's pseudo-mask shrunk by each of ``shrinks`` px (a teacher model runs once)."""
    if config.pseudo_model:
        labels = teacher_labels(rgb, config.pseudo_model, mpp=config.mpp)
        return [shrink_labels(labels, px) > 0 for px in shrinks]
    return [pseudo_mask(rgb, config.pseudo_method, shrink_px=px, mpp=config.mpp, gate=config.pseudo_gate)
            for px in shrinks]


def _image(rgb: np.ndarray, source: str, config: DataConfig, group: str = "") -> IhcImage:
    if config.interior_um > 0:  # the "interior" head: mask and interior channels
        pseudo, interior = _pseudo_masks(rgb, config, [_shrink_px(config), _shrink_px(config) + _interior_px(config)])
        pseudo = np.dstack([pseudo, interior & pseudo])
    else:
        [pseudo] = _pseudo_masks(rgb, config, [_shrink_px(config)])
    return IhcImage(rgb=np.ascontiguousarray(rgb), pseudo=pseudo, source=source, group=group or source)


def _shrink_px(config: DataConfig) -> int:
    return round(config.mask_shrink_um / config.mpp)


def _interior_px(config: DataConfig) -> int:
    return max(1, round(config.interior_um / config.mpp)) if config.interior_um > 0 else 0


def _read_rgb(path: Path) -> np.ndarray:
    try:
        image = io.imread(path)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read training image {path}: {exc}") from None
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def _slide_images(path: Path, config: DataConfig, rng: np.random.Generator) -> list[IhcImage]:
    """The whole slide at the working resolution if small, else tiles sampled from tissue."""
    from nucflow.slide import open_slide, tissue_mask

    with open_slide(path) as slide:
        rows, cols = slide.shape_at(config.mpp)
        if rows * cols <= _WHOLE_SLIDE_MAX:
            rgb = slide.read(mpp=config.mpp, row=0, col=0, rows=rows, cols=cols)
            return [_image(rgb, path.name, config, group=path.name)]
        thumb, thumb_mpp = slide.thumbnail()
        tissue = np.argwhere(tissue_mask(thumb, mpp=thumb_mpp))
        if len(tissue) == 0:
            raise TrainingError(f"slide {path} has no tissue to train on")
        side = 2 * config.crop
        picks = tissue[rng.integers(len(tissue), size=config.tiles_per_slide)]
        centres = (picks + 0.5) * thumb_mpp / config.mpp
        return [
            _image(slide.read(mpp=config.mpp, row=int(r) - side // 2, col=int(c) - side // 2,
                              rows=side, cols=side), f"{path.name}@{int(r)},{int(c)}",
                   config, group=path.name)
            for r, c in centres
        ]


def load_ihc(
    *,
    slides: Sequence[Path],
    tiles: Sequence[Path],
    config: DataConfig,
    rng: np.random.Generator,
) -> list[IhcImage]:
    """Load IHC training images at ``config.mpp`` from slides, tile files and (optionally) skimage.

    Slides are opened with :func:`nucflow.slide.open_slide` (their own resolution); tile
    files are at the resolution their ``@MPP`` suffix gives, else at ``config.tile_mpp``.
    Each tile's group is its folder (one stain source), each slide its own group.
    """
    images: list[IhcImage] = []
    for path in slides:
        try:
            images += _slide_images(path, config, rng)
        except SlideError as exc:
            raise TrainingError(f"cannot use slide {path} for training: {exc}") from None
    for given in tiles:
        path, mpp = split_mpp(given)
        scale = (mpp or config.tile_mpp) / config.mpp
        images.append(_image(_rescale_rgb(_read_rgb(path), scale), path.name, config, group=path.parent.name))
    if config.skimage_ihc:
        from skimage.data import immunohistochemistry

        rgb = _rescale_rgb(immunohistochemistry(), config.tile_mpp / config.mpp)
        images.append(_image(rgb, "skimage-ihc", config))
    return images


def _instance_masks(path: Path) -> list[np.ndarray]:
    """Instance label images (0 = background) of a mask file; binary masks get one label per component."""
    if path.suffix == ".npy":  # PanNuke layout: (N, H, W, 6), last channel = background
        stack = np.load(path, mmap_mode="r")
        if stack.ndim != 4:
            raise TrainingError(f"mask array {path} must be (N, H, W, C) like PanNuke's masks.npy")
        return [np.asarray(m[..., :-1]).max(axis=-1).astype(np.int32) for m in stack]
    try:
        labels = io.imread(path)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read mask {path}: {exc}") from None
    labels = labels.reshape(labels.shape[:2] + (-1,)).max(axis=-1)
    if labels.max() <= 1 or labels.dtype == np.bool_:
        return [ndimage.label(labels > 0)[0]]
    return [labels.astype(np.int32)]


def load_masks(paths: Sequence[Path], *, config: DataConfig) -> list[np.ndarray]:
    """Binary masks (rows, cols) bool at ``config.mpp`` from instance/binary images or ``.npy``.

    With ``config.mask_shrink_um``, every nucleus is shrunk by that much first (at ``mpp``).
    With ``config.interior_um`` (the "interior" head), each mask is (rows, cols, 2): the mask
    and its interior, every nucleus eroded by that many µm more (also where two touch).
    """
    scale = config.mask_mpp / config.mpp
    shrink, interior = _shrink_px(config), _interior_px(config)
    masks: list[np.ndarray] = []
    for path in paths:
        for labels in _instance_masks(path):
            if abs(scale - 1.0) > 1e-3:
                if shrink or interior:
                    labels = transform.rescale(labels, scale, order=0, preserve_range=True,
                                               anti_aliasing=False).astype(np.int32)
                else:
                    labels = (transform.rescale((labels > 0).astype(np.float32), scale, order=1) > 0.5).astype(np.int32)
            mask = shrink_labels(labels, shrink)
            if interior:
                masks.append(np.dstack([mask > 0, shrink_labels(mask, interior) > 0]))
            else:
                masks.append(mask > 0)
    return masks


def _augment(stack: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 90° rotation and flip of a (rows, cols, ...) array."""
    stack = np.rot90(stack, k=int(rng.integers(4)))
    return stack[:, ::-1] if rng.random() < 0.5 else stack


def _corner(shape: tuple[int, ...], side: int, rng: np.random.Generator) -> tuple[int, int]:
    """The top-left corner of a random ``side`` x ``side`` window of an array of ``shape``
    padded at the bottom and right to at least ``side``."""
    row = int(rng.integers(max(shape[0], side) - side + 1))
    col = int(rng.integers(max(shape[1], side) - side + 1))
    return row, col


def _window(array: np.ndarray, row: int, col: int, side: int, fill: float) -> np.ndarray:
    """``array[row:row+side, col:col+side]``, padded with ``fill`` at the bottom and right where
    the array ends (only the window is copied, never the whole array)."""
    window = array[row : row + side, col : col + side]
    if window.shape[:2] != (side, side):
        pad = [(0, side - window.shape[0]), (0, side - window.shape[1])] + [(0, 0)] * (array.ndim - 2)
        window = np.pad(window, pad, constant_values=fill)
    return window


def _crop(array: np.ndarray, side: int, rng: np.random.Generator, fill: float) -> np.ndarray:
    """A random ``side`` x ``side`` window, padded with ``fill`` where the array is smaller."""
    return _window(array, *_corner(array.shape, side, rng), side, fill)


def sampling_weights(images: Sequence[IhcImage], *, balance_groups: bool = False) -> np.ndarray:
    """Probability of drawing each image: by area, or (``balance_groups``) each group equally
    likely and, within a group, by area, so no single source dominates the batches."""
    areas = np.array([im.rgb.shape[0] * im.rgb.shape[1] for im in images], float)
    if not balance_groups:
        return areas / areas.sum()
    groups = [im.group or im.source for im in images]
    totals: dict[str, float] = {}
    for g, a in zip(groups, areas, strict=True):
        totals[g] = totals.get(g, 0.0) + a
    weights = np.array([a / totals[g] for g, a in zip(groups, areas, strict=True)]) / len(totals)
    return weights / weights.sum()


def sample_ihc(
    images: Sequence[IhcImage], *, n: int, crop: int, scale_jitter: float,
    rng: np.random.Generator, balance_groups: bool = False, lowres_prob: float = 0.0, lowres_factor: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` augmented crops: RGB (n, crop, crop, 3) float32 in [0, 1], pseudo (n, crop, crop)
    bool, or (n, crop, crop, 2) for the "interior" head.

    Images are drawn with :func:`sampling_weights`. A ``lowres_prob`` share of the RGB crops is
    down-sampled by ``lowres_factor`` and up-sampled back (a coarser scan at this resolution).
    """
    picks = rng.choice(len(images), size=n, p=sampling_weights(images, balance_groups=balance_groups))
    rgbs, pseudos = [], []
    for i in picks:
        scale = math.exp(rng.uniform(-1, 1) * math.log1p(scale_jitter))
        side = max(8, round(crop * scale))
        # Cut the window first: converting the whole image for every crop cost ~25 ms a crop.
        image = images[i]
        row, col = _corner(image.rgb.shape, side, rng)
        stack = np.dstack([_window(image.rgb, row, col, side, fill=255) / 255.0,
                           _window(image.pseudo, row, col, side, fill=True)]).astype(np.float32)
        window = _augment(stack, rng)
        if side != crop:
            window = transform.resize(window, (crop, crop), order=1, anti_aliasing=side > crop)
        rgb = window[..., :3]
        if lowres_prob > 0 and rng.random() < lowres_prob:  # seen as a coarser scan would show it
            small = max(8, round(crop / lowres_factor))
            rgb = transform.resize(transform.resize(rgb, (small, small), order=1, anti_aliasing=True),
                                   (crop, crop), order=1)
        rgbs.append(rgb)
        pseudos.append(window[..., 3] > 0.5 if window.shape[-1] == 4 else window[..., 3:] > 0.5)
    return np.stack(rgbs).astype(np.float32), np.stack(pseudos)


def sample_masks(
    masks: Sequence[np.ndarray], *, n: int, crop: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` augmented mask crops, (n, crop, crop) bool, or (n, crop, crop, 2) for the "interior" head."""
    picks = rng.integers(len(masks), size=n)
    return np.stack([_augment(_crop(masks[i], crop, rng, fill=0), rng) for i in picks])
