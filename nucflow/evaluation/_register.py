"""How far an instance ground truth sits from its own image, and the truth moved back onto it.

Some published annotations are displaced from the pixels they outline: on DeepLIIF's Bladder1
the outlines sit 6 px (1.5 µm) left of their nuclei, on Lung1 7 px below them. A
displacement of that size halves a nucleus' IoU, so it caps every method's detection F1 at
IoU 0.5, whatever the method. The offset is estimated from the image alone: the shift that
best aligns the truth's foreground with the image's hematoxylin + DAB optical density
(``skimage.registration.phase_cross_correlation``, unnormalised, i.e. plain cross-correlation),
so no method's output takes part and every method is scored against the same moved truth.

``nucflow evaluate`` records each instance truth's offset in its report's settings and warns
from :data:`TRUTH_OFFSET_WARN_UM` (``validate`` warns once per set); ``benchmarks/quality.py
--register-truth`` scores every method against the moved truth as a sensitivity check. The
scores themselves are always against the truth as published.
"""

from __future__ import annotations

import numpy as np
from skimage.registration import phase_cross_correlation

from nucflow.errors import EvaluationError
from nucflow.stain import stain_od

__all__ = ["TRUTH_OFFSET_WARN_UM", "shift_labels", "truth_offset"]

#: ``evaluate`` warns when an instance truth sits at least this far (µm) from its image's nuclei.
TRUTH_OFFSET_WARN_UM = 1.0


def truth_offset(rgb: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """The whole-pixel shift ``(rows, cols)`` that moves ``labels`` onto the nuclei of ``rgb``.

    ``rgb``: uint8 (rows, cols, 3), the annotated image; ``labels``: its instance truth, same
    rows and cols, 0 = background. (0, 0) when the truth is empty.
    """
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise EvaluationError(f"truth of shape {labels.shape} does not fit an image of shape {rgb.shape[:2]}")
    foreground = (labels > 0).astype(np.float64)
    if not foreground.any():
        return (0, 0)
    hematoxylin, dab = stain_od(rgb)
    shift, _, _ = phase_cross_correlation(hematoxylin + dab, foreground, normalization=None)
    return (int(round(float(shift[0]))), int(round(float(shift[1]))))


def shift_labels(labels: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """``labels`` moved by ``offset`` (rows, cols), same shape; what leaves the image is dropped
    and the uncovered margin is background (no wrap-around)."""
    out = np.zeros_like(labels)
    rows, cols = labels.shape
    dy, dx = offset
    if abs(dy) >= rows or abs(dx) >= cols:
        return out
    src_r = slice(max(0, -dy), rows - max(0, dy))
    src_c = slice(max(0, -dx), cols - max(0, dx))
    dst_r = slice(max(0, dy), rows - max(0, -dy))
    dst_c = slice(max(0, dx), cols - max(0, -dx))
    out[dst_r, dst_c] = labels[src_r, src_c]
    return out
