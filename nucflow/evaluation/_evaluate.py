"""Score segmentations of a folder of images against their ground truth.

For each method (a folder of predicted label images, the trained ``unet``, or one of the
paper's baselines) and each image: segment it the way ``segment`` does
(:func:`nucflow.pipeline.image.segment_image`: same working resolution, same per-image Otsu
fit on the tissue of the thumbnail, same post-processing), call each predicted nucleus
positive with the stain profile's rule (:func:`nucflow.postprocess.dab_positive`, as
``segment``'s ``dab_positive`` column), and count the metrics of
:mod:`nucflow.evaluation.metrics` on the image's own pixel grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucflow.errors import EvaluationError
from nucflow.evaluation._register import TRUTH_OFFSET_WARN_UM, truth_offset
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
from nucflow.methods import METHODS
from nucflow.pipeline.image import positive_calls as _positive_calls

__all__ = ["DEFAULT_METHODS", "EVALUATION_METHODS", "POINT_MATCH_UM", "PRED_METHOD", "evaluate", "positive_calls"]

log = logging.getLogger(__name__)

#: Methods :func:`evaluate` can run itself (the same as ``segment --method``).
EVALUATION_METHODS = METHODS
#: What :func:`evaluate` runs when given neither methods nor predictions: the trained model.
DEFAULT_METHODS = ("unet",)
#: A predicted nucleus matches an annotated point when its centroid lies within this many µm.
POINT_MATCH_UM = 4.0
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
    stain_profile: str | None = None,
    sigma: float | None = None,
    model_mpp: float | None = None,
    progress: Progress | None = None,
    check_registration: bool = True,
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
        Methods to run on the images, side by side; none (and no ``pred``) runs ``unet``.
    model : path, optional
        Model for ``unet`` (default: the bundled model).
    mpp : float, optional
        µm/px of the tiles; required to run a method (plain tiles carry no resolution).
    truth_format : str, optional
        Force one of :data:`TRUTH_FORMATS` instead of detecting it per file.
    stain_profile : str, optional
        Post-processing and positivity rule of every method and of given predictions; None:
        the model card's for ``unet``, ``ki67`` for the baselines and ``pred`` (as ``segment``).
    sigma : float, optional
        Gaussian standard deviation (px) of the baselines (default: ``segment.yaml``'s).
    model_mpp : float, optional
        Run the model at this µm/px instead of its card's.
    progress : callable(done, total, message), optional
        Called after each image and method.
    check_registration : bool
        Measure each instance truth's offset from its image's nuclei (``truth_offsets_px`` in
        the settings, a warning from :data:`TRUTH_OFFSET_WARN_UM`); ``validate`` does it once
        per set, not once per method.

    Returns
    -------
    EvaluationReport
        Scores per image, their mean over images, and pooled over all images, per method.

    Raises
    ------
    EvaluationError
        An unknown method, a missing ``mpp``, unpaired files, unreadable
        or mismatched images and truth, or an unusable model.
    """
    methods = _check_methods(methods, pred=pred, mpp=mpp, truth_format=truth_format)
    cases = _cases(Path(images), Path(truth), None if pred is None else Path(pred))
    runners = {m: _runner(m, model=model, mpp=mpp, stain_profile=stain_profile, sigma=sigma, model_mpp=model_mpp)
               for m in methods}
    scores: list[ImageScore] = []
    offsets: dict[str, list[int]] = {}
    total, done = len(cases) * len(methods), 0
    for case in cases:
        rgb = read_image(case.image)
        gt = read_truth(case.truth, format=truth_format)
        _check_shapes(case, rgb, gt)
        if check_registration and gt.labels is not None:
            offsets[case.name] = _check_registration(case, rgb, gt.labels, mpp)
        for method, run in runners.items():
            labels, positive = run(rgb, case)
            counts = _count(labels, gt, positive, mpp=mpp)
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
            "stain_profiles": {m: r.stain_profile for m, r in runners.items()},
            "sigma": sigma,
            "model_mpp": model_mpp,
            "point_match_um": POINT_MATCH_UM,
            "model": {m: r.model_id for m, r in runners.items() if r.model_id},
            "truth_offsets_px": offsets,
        },
    )


def _check_registration(case: _Case, rgb: np.ndarray, labels: np.ndarray, mpp: float | None) -> list[int]:
    """The shift (rows, cols) that moves the case's instance truth onto its image's nuclei
    (:func:`nucflow.evaluation._register.truth_offset`); a warning when it is at least
    :data:`TRUTH_OFFSET_WARN_UM` (or that many 0.25 µm pixels when ``mpp`` is unknown)."""
    dy, dx = truth_offset(rgb, labels)
    distance_px = math.hypot(dy, dx)
    if distance_px * (mpp or 0.25) >= TRUTH_OFFSET_WARN_UM:
        where = f"{distance_px * mpp:.1f} µm" if mpp else f"{distance_px:.0f} px"
        log.warning(
            "%s: its truth outlines sit %s from the image's nuclei (moved by %d rows, %d columns they align best), "
            "which caps every method's IoU-based scores (F1 at IoU 0.5, AJI, PQ); check how the truth was exported",
            case.name, where, dy, dx)
    return [dy, dx]


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
    if pred is None and not methods:
        methods = DEFAULT_METHODS
    chosen = ([PRED_METHOD] if pred is not None else []) + list(dict.fromkeys(methods))
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


def _count(labels: np.ndarray, gt: Truth, positive: dict[int, bool], *, mpp: float | None) -> Counts:
    if gt.points is not None:
        reach = POINT_MATCH_UM / mpp if mpp is not None else None
        return count_points(labels, gt.points, pred_positive=positive, point_positive=gt.point_positive,
                            max_distance=reach)
    assert gt.labels is not None
    return count_instances(labels, gt.labels, pred_positive=positive, true_positive=gt.positive)


def positive_calls(rgb: np.ndarray, labels: np.ndarray, *, stain_profile: str = "ki67") -> dict[int, bool]:
    """Ki67 call of each nucleus by the stain profile's rule: the ``dab_positive`` of segment's tables.

    Parameters
    ----------
    rgb : np.ndarray uint8 (rows, cols, 3)
    labels : np.ndarray int (rows, cols)
        0 = background.
    stain_profile : str
        Name or YAML path of the stain profile whose rule applies.

    Returns
    -------
    dict[int, bool]
        Object id -> positive.
    """
    from nucflow.postprocess import load_stain_profile

    return _positive_calls(rgb, labels, load_stain_profile(stain_profile))


Segmenter = Callable[[np.ndarray, _Case], tuple[np.ndarray, dict[int, bool]]]


class _Runner:
    """Turns an image into predicted labels (on the image's pixel grid) and their calls."""

    def __init__(self, segment: Segmenter, *, stain_profile: str, model_id: str = ""):
        self._segment = segment
        self.stain_profile = stain_profile
        self.model_id = model_id

    def __call__(self, rgb: np.ndarray, case: _Case) -> tuple[np.ndarray, dict[int, bool]]:
        labels, positive = self._segment(rgb, case)
        if labels.shape != rgb.shape[:2]:
            raise EvaluationError(
                f"prediction for {case.image} is {labels.shape[0]}x{labels.shape[1]} px but the image is "
                f"{rgb.shape[0]}x{rgb.shape[1]}"
            )
        return labels, positive


def _model_device(method: str) -> str:
    """Where ``method`` runs: the model on the first CUDA device when PyTorch sees one (its
    autocast then computes in bfloat16), else on the CPU; the baselines always on the CPU."""
    if method != "unet":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _runner(method: str, *, model: str | Path | None, mpp: float | None, stain_profile: str | None,
            sigma: float | None, model_mpp: float | None) -> _Runner:
    from dataclasses import replace

    from nucflow.errors import ConfigError, ModelError
    from nucflow.pipeline import load_segment_config
    from nucflow.pipeline.image import (
        DEFAULT_STAIN_PROFILE,
        build_predictor,
        method_spec,
        segment_image,
        with_stain_profile,
    )
    from nucflow.postprocess import PostprocessConfig, load_stain_profile

    def load_profile(name: str) -> PostprocessConfig:
        try:
            return load_stain_profile(name)
        except ConfigError as exc:
            raise EvaluationError(str(exc)) from None

    if method == PRED_METHOD:
        profile = load_profile(stain_profile or DEFAULT_STAIN_PROFILE)

        def read_pred(rgb: np.ndarray, case: _Case) -> tuple[np.ndarray, dict[int, bool]]:
            assert case.pred is not None, "_cases pairs every image with a prediction when pred is given"
            labels = read_labels(case.pred)
            return labels, _positive_calls(rgb, labels, profile) if labels.shape == rgb.shape[:2] else {}

        return _Runner(read_pred, stain_profile=profile.stain_profile)
    assert mpp is not None, "_check_methods requires mpp to run a method"
    config = load_segment_config()
    config = replace(config, method=method, model=str(model) if model is not None else None,
                     model_mpp=model_mpp, stain_profile=stain_profile,
                     baseline_sigma=config.baseline_sigma if sigma is None else sigma)
    if stain_profile is not None:
        load_profile(stain_profile)  # a bad name or file is an EvaluationError before the model loads
    try:
        spec = method_spec(config)
    except ModelError as exc:
        raise EvaluationError(f"cannot evaluate {method}: {exc}") from None
    config = with_stain_profile(config, spec)
    assert config.stain_profile is not None, "with_stain_profile names one"
    profile = load_profile(config.stain_profile)
    predictor = build_predictor(spec, config, device=_model_device(method))

    def segment(rgb: np.ndarray, case: _Case) -> tuple[np.ndarray, dict[int, bool]]:
        result = segment_image(rgb, mpp=mpp, spec=spec, config=config, predictor=predictor)
        return result.labels_at(rgb.shape[:2], mpp), result.positive(profile)

    return _Runner(segment, stain_profile=profile.stain_profile, model_id=spec.model_id if method == "unet" else "")
