"""Score segmentations of a folder of images against their ground truth.

For each method (a folder of predicted label images, the trained ``unet``, or one of the
paper's baselines) and each image: segment it (unless predictions are given), call each
predicted nucleus Ki67-positive when its mean DAB optical density reaches the stain
profile's ``dab_threshold``, and count the metrics of :mod:`nucflow.evaluation.metrics`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from nucflow.errors import EvaluationError
from nucflow.evaluation._report import EvaluationReport, ImageScore
from nucflow.evaluation._truth import (
    IMAGE_SUFFIXES,
    TRUTH_FORMATS,
    TRUTH_SUFFIXES,
    Truth,
    pair_files,
    read_image,
    read_labels,
    read_truth,
)
from nucflow.evaluation.metrics import Counts, count_instances, count_points

__all__ = ["EVALUATION_METHODS", "PRED_METHOD", "evaluate", "positive_calls"]

log = logging.getLogger(__name__)

#: Methods :func:`evaluate` can run itself.
EVALUATION_METHODS = ("unet", "threshold", "deconvolution")
#: The method name under which given predictions (``pred=``) are reported.
PRED_METHOD = "pred"

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class _Case:
    """One image with its truth (and given prediction, if any)."""

    name: str
    image: Path
    truth: Path
    pred: Path | None


def evaluate(
    images: str | Path,
    truth: str | Path,
    *,
    pred: str | Path | None = None,
    methods: Sequence[str] = (),
    model: str | Path | None = None,
    mpp: float | None = None,
    truth_format: str | None = None,
    stain_profile: str = "ki67",
    sigma: float = 1.0,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Score predictions and/or methods on the images of a folder against their truth.

    Parameters
    ----------
    images : path
        Folder of RGB tiles (PNG/TIFF/JPEG).
    truth : path
        Folder of ground truth paired with the images by file stem (see
        :func:`nucflow.evaluation.read_truth` for the formats).
    pred : path, optional
        Folder of predicted label images (or binary masks), paired by stem; reported as
        method ``"pred"``.
    methods : sequence of {"unet", "threshold", "deconvolution"}
        Methods to run on the images, side by side.
    model : path, optional
        Model for ``unet`` (default: the bundled model).
    mpp : float, optional
        µm/px of the tiles; required to run a method (plain tiles carry no resolution).
    truth_format : str, optional
        Force one of :data:`TRUTH_FORMATS` instead of detecting it per file.
    stain_profile : str
        Post-processing and DAB threshold of the baselines and given predictions (``unet``
        uses its model card's profile).
    sigma : float
        Gaussian standard deviation (px) of the baselines.
    progress : callable(done, total, message), optional
        Called after each image and method.

    Returns
    -------
    EvaluationReport
        Scores per image, their mean over images, and pooled over all images, per method.

    Raises
    ------
    EvaluationError
        No method given, an unknown method, a missing ``mpp``, unpaired files, unreadable
        or mismatched images and truth, or an unusable model.
    """
    methods = _check_methods(methods, pred=pred, mpp=mpp, truth_format=truth_format)
    cases = _cases(Path(images), Path(truth), None if pred is None else Path(pred))
    runners = {m: _runner(m, model=model, mpp=mpp, stain_profile=stain_profile, sigma=sigma) for m in methods}
    scores: list[ImageScore] = []
    total, done = len(cases) * len(methods), 0
    for case in cases:
        rgb = read_image(case.image)
        gt = read_truth(case.truth, format=truth_format)
        _check_shapes(case, rgb, gt)
        for method, run in runners.items():
            labels = run(rgb, case)
            counts = _count(labels, gt, rgb, run.dab_threshold)
            scores.append(ImageScore(method=method, image=case.name, truth_format=gt.format, counts=counts))
            done += 1
            log.info("%s %s: %d nuclei predicted, %d true", method, case.name, counts.n_pred, counts.n_true)
            if progress is not None:
                progress(done, total, f"{method} {case.name}")
    return EvaluationReport(
        scores=tuple(scores),
        methods=tuple(methods),
        settings={
            "images": str(images),
            "truth": str(truth),
            "pred": None if pred is None else str(pred),
            "mpp": mpp,
            "truth_format": truth_format,
            "stain_profile": stain_profile,
            "sigma": sigma,
            "model": {m: r.model_id for m, r in runners.items() if r.model_id},
        },
    )


def _check_methods(
    methods: Sequence[str], *, pred: str | Path | None, mpp: float | None, truth_format: str | None
) -> list[str]:
    unknown = [m for m in methods if m not in EVALUATION_METHODS]
    if unknown:
        raise EvaluationError(
            f"unknown method {unknown[0]!r}; choose from {', '.join(EVALUATION_METHODS)} (or give --pred)"
        )
    if truth_format is not None and truth_format not in TRUTH_FORMATS:
        raise EvaluationError(f"unknown truth format {truth_format!r}; choose one of {', '.join(TRUTH_FORMATS)}")
    chosen = ([PRED_METHOD] if pred is not None else []) + list(dict.fromkeys(methods))
    if not chosen:
        raise EvaluationError("nothing to evaluate: give predictions (--pred DIR) or at least one --method")
    if len(chosen) > (pred is not None) and mpp is None:
        raise EvaluationError(
            "plain tiles carry no resolution: give --mpp (µm per pixel, e.g. 0.25 for 40x DeepLIIF tiles) "
            f"to run {', '.join(m for m in chosen if m != PRED_METHOD)}"
        )
    if mpp is not None and not (mpp > 0 and math.isfinite(mpp)):
        raise EvaluationError(f"--mpp must be a positive number of µm per pixel, got {mpp}")
    return chosen


def _cases(images: Path, truth: Path, pred: Path | None) -> list[_Case]:
    pairs = pair_files(images, truth, what="truth", suffixes=TRUTH_SUFFIXES)
    preds: dict[Path, Path] = {}
    if pred is not None:
        preds = dict(pair_files(images, pred, what="predictions", suffixes=IMAGE_SUFFIXES[:3]))
    return [_Case(name=i.stem, image=i, truth=t, pred=preds.get(i)) for i, t in pairs]


def _check_shapes(case: _Case, rgb: np.ndarray, gt: Truth) -> None:
    if gt.labels is not None and gt.labels.shape != rgb.shape[:2]:
        raise EvaluationError(
            f"truth {case.truth} is {gt.labels.shape[0]}x{gt.labels.shape[1]} px but image {case.image} is "
            f"{rgb.shape[0]}x{rgb.shape[1]}: they must show the same pixels"
        )


def _count(labels: np.ndarray, gt: Truth, rgb: np.ndarray, dab_threshold: float) -> Counts:
    pred_positive = positive_calls(rgb, labels, dab_threshold=dab_threshold)
    if gt.points is not None:
        return count_points(labels, gt.points, pred_positive=pred_positive, point_positive=gt.point_positive)
    assert gt.labels is not None
    return count_instances(labels, gt.labels, pred_positive=pred_positive, true_positive=gt.positive)


def positive_calls(rgb: np.ndarray, labels: np.ndarray, *, dab_threshold: float) -> dict[int, bool]:
    """Ki67 call of each nucleus: mean DAB optical density (base 10) >= ``dab_threshold``.

    The same call as the ``dab_positive`` column of segment's nucleus tables.

    Parameters
    ----------
    rgb : np.ndarray uint8 (rows, cols, 3)
    labels : np.ndarray int (rows, cols)
        0 = background.
    dab_threshold : float

    Returns
    -------
    dict[int, bool]
        Object id -> positive.
    """
    from nucflow.postprocess import stain_od

    ids = np.unique(labels[labels > 0])
    if len(ids) == 0:
        return {}
    _, dab = stain_od(rgb)
    means = ndimage.mean(dab, labels=labels, index=ids)
    return {int(i): bool(m >= dab_threshold) for i, m in zip(ids, means, strict=True)}


class _Runner:
    """Turns an image into predicted labels for one method."""

    def __init__(self, segment: Callable[[np.ndarray, _Case], np.ndarray], *, dab_threshold: float, model_id: str = ""):
        self._segment = segment
        self.dab_threshold = dab_threshold
        self.model_id = model_id

    def __call__(self, rgb: np.ndarray, case: _Case) -> np.ndarray:
        labels = self._segment(rgb, case)
        if labels.shape != rgb.shape[:2]:
            raise EvaluationError(
                f"prediction for {case.image} is {labels.shape[0]}x{labels.shape[1]} px but the image is "
                f"{rgb.shape[0]}x{rgb.shape[1]}"
            )
        return labels


def _runner(method: str, *, model: str | Path | None, mpp: float | None, stain_profile: str, sigma: float) -> _Runner:
    from nucflow.postprocess import load_stain_profile

    config = load_stain_profile(stain_profile)
    if method == PRED_METHOD:
        return _Runner(_read_pred, dab_threshold=config.dab_threshold)
    assert mpp is not None, "_check_methods requires mpp to run a method"
    if method == "unet":
        return _unet_runner(model, mpp=mpp)
    return _Runner(_baseline(method, mpp=mpp, config=config, sigma=sigma), dab_threshold=config.dab_threshold)


def _read_pred(rgb: np.ndarray, case: _Case) -> np.ndarray:
    assert case.pred is not None, "_cases pairs every image with a prediction when pred is given"
    return read_labels(case.pred)


def _baseline(method: str, *, mpp: float, config: Any, sigma: float) -> Callable[[np.ndarray, _Case], np.ndarray]:
    from nucflow.inference.baselines import baseline_probability
    from nucflow.postprocess import label_nuclei

    def segment(rgb: np.ndarray, case: _Case) -> np.ndarray:
        prob = baseline_probability(rgb, method=method, sigma=sigma)
        return label_nuclei(prob, mpp=mpp, config=config)

    return segment


def _unet_runner(model: str | Path | None, *, mpp: float) -> _Runner:
    from nucflow.errors import ModelError
    from nucflow.inference import predict_image
    from nucflow.models import default_model_path, load_model
    from nucflow.postprocess import label_nuclei, load_stain_profile

    path = model if model is not None else default_model_path()
    if path is None:
        raise EvaluationError("method unet needs a model: pass --model PATH (no default model ships with this install)")
    try:
        loaded = load_model(path)
    except ModelError as exc:
        raise EvaluationError(f"cannot evaluate unet: {exc}") from None
    config = load_stain_profile(loaded.card.stain_profile)

    def segment(rgb: np.ndarray, case: _Case) -> np.ndarray:
        work = _resample(rgb, mpp / loaded.card.mpp)
        prob = predict_image(work, loaded)
        if prob.shape != rgb.shape[:2]:
            prob = resize(prob, rgb.shape[:2], order=1, preserve_range=True).astype(np.float32)
        return label_nuclei(prob, mpp=mpp, config=config)

    return _Runner(segment, dab_threshold=config.dab_threshold, model_id=loaded.card.model_id)


def _resample(rgb: np.ndarray, scale: float) -> np.ndarray:
    """An RGB image resized by ``scale`` (image mpp / model mpp), uint8."""
    if abs(scale - 1.0) < 1e-3:
        return rgb
    shape = (max(1, round(rgb.shape[0] * scale)), max(1, round(rgb.shape[1] * scale)))
    out = resize(rgb, shape, order=1, anti_aliasing=scale < 1, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
