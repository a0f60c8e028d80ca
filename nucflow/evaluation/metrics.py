"""Segmentation metrics of the paper and its peers, on instance label images.

Every metric takes a predicted and a true label image: int (rows, cols), 0 = background,
k > 0 = object k (ids need not be consecutive). Each is derived from additive counts
(:class:`Counts`), so a set of images can be scored per image and *pooled* (counts summed
over the images, then the ratio taken) with the same code.

Definitions
-----------
- Pixel level (foreground = label > 0): Dice, precision, recall and balanced accuracy
  (mean of sensitivity and specificity).
- AJI (Kumar et al. 2017): each true object is matched to the predicted object of highest
  IoU among those it overlaps; AJI = sum of matched intersections / (sum of matched unions +
  true objects left unmatched + predicted objects never matched).
- Object Dice and object Hausdorff (Sirinukunwattana et al. 2017, as in the paper's
  reference implementation): each object is matched to the object of the other image that
  it overlaps most; its Dice (or Hausdorff distance, in pixels) is weighted by its share of
  its image's foreground area; the two directions are averaged. An object that overlaps
  nothing scores Dice 0 and is left out of the Hausdorff mean, as in the reference
  implementation; unlike it, the Hausdorff weights are renormalised over the objects that
  overlap something (so no overlap at all is NaN, not a perfect 0).
- Detection F1 at IoU > 0.5 and panoptic quality PQ = F1 x mean IoU of the matched pairs
  (Kirillov et al. 2019, as HoVer-Net and CoNIC report it).
- Ki67: among matched pairs (IoU > 0.5) the accuracy of the positive/negative call, and the
  labelling index (positive / all nuclei, in %) of prediction and truth.

When both images are empty every similarity is 1 and the Hausdorff distance 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nucflow.errors import EvaluationError

__all__ = [
    "METRICS",
    "Counts",
    "Overlaps",
    "aji",
    "balanced_accuracy",
    "count_instances",
    "count_points",
    "detection_f1",
    "dice",
    "object_dice",
    "object_hausdorff",
    "overlaps",
    "panoptic_quality",
    "precision",
    "recall",
]

#: Metric names in report order (the columns of the paper's table, then its peers').
METRICS = (
    "dice",
    "balanced_accuracy",
    "precision",
    "recall",
    "aji",
    "object_dice",
    "object_hausdorff",
    "f1_50",
    "det_precision",
    "det_recall",
    "pq",
    "ki67_accuracy",
    "li_pred",
    "li_true",
    "n_pred",
    "n_true",
)

_MATCH_IOU = 0.5


@dataclass(frozen=True)
class Overlaps:
    """Areas of the objects of two label images and the intersections of overlapping pairs.

    Attributes
    ----------
    pred_ids, true_ids : np.ndarray int64 (n_pred,), (n_true,)
        Object ids present in each image, ascending.
    pred_area, true_area : np.ndarray int64 (n_pred,), (n_true,)
        Pixel area of each of those objects.
    pair_pred, pair_true : np.ndarray int64 (n_pairs,)
        Indices (into ``pred_ids`` / ``true_ids``) of each overlapping pair.
    pair_inter : np.ndarray int64 (n_pairs,)
        Intersection area of each pair (> 0).
    """

    pred_ids: np.ndarray
    true_ids: np.ndarray
    pred_area: np.ndarray
    true_area: np.ndarray
    pair_pred: np.ndarray
    pair_true: np.ndarray
    pair_inter: np.ndarray

    @property
    def pair_iou(self) -> np.ndarray:
        """float64 (n_pairs,): intersection over union of each overlapping pair."""
        union = self.pred_area[self.pair_pred] + self.true_area[self.pair_true] - self.pair_inter
        return self.pair_inter / union


def overlaps(pred: np.ndarray, true: np.ndarray) -> Overlaps:
    """Object areas and pairwise intersections of two label images of the same shape."""
    pred, true = _check_pair(pred, true)
    pred_ids, pred_seq = _sequential(pred)
    true_ids, true_seq = _sequential(true)
    both = (pred_seq > 0) & (true_seq > 0)
    n_true = len(true_ids) + 1
    keys, inter = np.unique(pred_seq[both] * n_true + true_seq[both], return_counts=True)
    return Overlaps(
        pred_ids=pred_ids,
        true_ids=true_ids,
        pred_area=np.bincount(pred_seq.ravel(), minlength=len(pred_ids) + 1)[1:],
        true_area=np.bincount(true_seq.ravel(), minlength=len(true_ids) + 1)[1:],
        pair_pred=keys // n_true - 1,
        pair_true=keys % n_true - 1,
        pair_inter=inter.astype(np.int64),
    )


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(object ids ascending, int64 image where object ``ids[k]`` is ``k + 1``, 0 stays 0)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    seq = inverse.reshape(labels.shape).astype(np.int64)
    if ids[0] == 0:
        return ids[1:].astype(np.int64), seq
    return ids.astype(np.int64), seq + 1


def _check_pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 2:
        raise EvaluationError(
            f"label images must be 2-D and of the same shape, got {pred.shape} and {true.shape}"
        )
    return pred, true


@dataclass(frozen=True)
class Counts:
    """Additive counts behind every metric; sum them over images to pool.

    ``Counts`` support ``+`` and :meth:`scores` turns them into the metrics of
    :data:`METRICS`. The flags say what was measurable: ``pixel``/``objects`` are False for
    point annotations, ``ki67`` is True only when both sides carried positivity; a sum keeps
    a flag only if every term has it.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    aji_inter: int = 0
    aji_union: int = 0
    odice_pred: float = 0.0
    odice_true: float = 0.0
    ohaus_pred: float = 0.0
    ohaus_true: float = 0.0
    haus_area_pred: int = 0
    haus_area_true: int = 0
    area_pred: int = 0
    area_true: int = 0
    det_tp: int = 0
    iou_sum: float = 0.0
    n_pred: int = 0
    n_true: int = 0
    ki67_agree: int = 0
    ki67_matched: int = 0
    pos_pred: int = 0
    pos_true: int = 0
    pixel: bool = True
    objects: bool = True
    ki67: bool = False

    def __add__(self, other: Counts) -> Counts:
        values = {}
        for field in dataclasses.fields(self):
            a, b = getattr(self, field.name), getattr(other, field.name)
            values[field.name] = (a and b) if isinstance(a, bool) else a + b
        return Counts(**values)

    def scores(self) -> dict[str, float]:
        """The metrics of :data:`METRICS` (NaN where not measurable), ratios in [0, 1]."""
        out = dict.fromkeys(METRICS, math.nan)
        if self.pixel:
            out.update(self._pixel_scores())
        if self.objects:
            out.update(self._object_scores())
        out.update(self._detection_scores())
        if self.ki67:
            out["ki67_accuracy"] = _ratio(self.ki67_agree, self.ki67_matched, empty=math.nan)
            out["li_pred"] = 100.0 * _ratio(self.pos_pred, self.n_pred, empty=math.nan)
            out["li_true"] = 100.0 * _ratio(self.pos_true, self.n_true, empty=math.nan)
        out["n_pred"], out["n_true"] = float(self.n_pred), float(self.n_true)
        return out

    def _pixel_scores(self) -> dict[str, float]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        perfect = 1.0 if tp + fp + fn == 0 else 0.0
        rates = [_ratio(tp, tp + fn, empty=math.nan), _ratio(tn, tn + fp, empty=math.nan)]
        defined = [r for r in rates if not math.isnan(r)]
        return {
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty=1.0),
            "precision": _ratio(tp, tp + fp, empty=perfect),
            "recall": _ratio(tp, tp + fn, empty=perfect),
            "balanced_accuracy": sum(defined) / len(defined) if defined else math.nan,
        }

    def _object_scores(self) -> dict[str, float]:
        empty = self.area_pred == 0 and self.area_true == 0
        if empty:
            return {"aji": 1.0, "object_dice": 1.0, "object_hausdorff": 0.0}
        odice = 0.5 * (
            _ratio(self.odice_pred, self.area_pred, empty=0.0)
            + _ratio(self.odice_true, self.area_true, empty=0.0)
        )
        ohaus = 0.5 * (
            _ratio(self.ohaus_pred, self.haus_area_pred, empty=math.nan)
            + _ratio(self.ohaus_true, self.haus_area_true, empty=math.nan)
        )
        return {
            "aji": _ratio(self.aji_inter, self.aji_union, empty=1.0),
            "object_dice": odice,
            "object_hausdorff": ohaus,
        }

    def _detection_scores(self) -> dict[str, float]:
        fp, fn = self.n_pred - self.det_tp, self.n_true - self.det_tp
        f1 = _ratio(2 * self.det_tp, 2 * self.det_tp + fp + fn, empty=1.0)
        out = {"f1_50": f1, "det_precision": _ratio(self.det_tp, self.n_pred, empty=1.0 if fn == 0 else 0.0),
               "det_recall": _ratio(self.det_tp, self.n_true, empty=1.0 if fp == 0 else 0.0)}
        if self.objects:
            sq = _ratio(self.iou_sum, self.det_tp, empty=1.0 if f1 == 1.0 else 0.0)
            out["pq"] = f1 * sq
        return out


def _ratio(num: float, den: float, *, empty: float) -> float:
    return float(num) / float(den) if den else empty


def count_instances(
    pred: np.ndarray,
    true: np.ndarray,
    *,
    pred_positive: Mapping[int, bool] | None = None,
    true_positive: Mapping[int, bool] | None = None,
) -> Counts:
    """All counts of :class:`Counts` for one predicted and one true label image.

    Parameters
    ----------
    pred, true : np.ndarray int (rows, cols)
        Label images, 0 = background.
    pred_positive, true_positive : mapping of object id -> bool, optional
        Ki67 calls of the objects; the Ki67 counts are filled only when both are given.
    """
    ov = overlaps(pred, true)
    _, pred_seq = _sequential(pred)
    _, true_seq = _sequential(true)
    tp = int(np.count_nonzero((pred_seq > 0) & (true_seq > 0)))
    fp, fn = int(ov.pred_area.sum()) - tp, int(ov.true_area.sum()) - tp
    aji_inter, aji_union = _aji_counts(ov)
    det_p, det_t, det_iou = _matches(ov)
    haus_pred, haus_area_pred = _object_hausdorff_sum(pred_seq, true_seq, ov, forward=True)
    haus_true, haus_area_true = _object_hausdorff_sum(pred_seq, true_seq, ov, forward=False)
    counts = Counts(
        tp=tp, fp=fp, fn=fn, tn=int(pred_seq.size) - tp - fp - fn,
        aji_inter=aji_inter, aji_union=aji_union,
        odice_pred=_object_dice_sum(ov, forward=True),
        odice_true=_object_dice_sum(ov, forward=False),
        ohaus_pred=haus_pred,
        ohaus_true=haus_true,
        haus_area_pred=haus_area_pred,
        haus_area_true=haus_area_true,
        area_pred=int(ov.pred_area.sum()), area_true=int(ov.true_area.sum()),
        det_tp=len(det_p), iou_sum=float(det_iou.sum()),
        n_pred=len(ov.pred_ids), n_true=len(ov.true_ids),
    )
    if pred_positive is None or true_positive is None:
        return counts
    return _with_ki67(
        counts,
        [bool(pred_positive.get(int(i), False)) for i in ov.pred_ids],
        [bool(true_positive.get(int(i), False)) for i in ov.true_ids],
        det_p,
        det_t,
    )


def _with_ki67(
    counts: Counts, pred_pos: list[bool], true_pos: list[bool], det_p: np.ndarray, det_t: np.ndarray
) -> Counts:
    pp, tp = np.asarray(pred_pos, bool), np.asarray(true_pos, bool)
    agree = int(np.count_nonzero(pp[det_p] == tp[det_t])) if len(det_p) else 0
    return dataclasses.replace(
        counts,
        ki67=True,
        ki67_agree=agree,
        ki67_matched=len(det_p),
        pos_pred=int(pp.sum()),
        pos_true=int(tp.sum()),
    )


def _best_per(owner: np.ndarray, score: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Index of the pair with the highest score for each owner (ties: lowest other id)."""
    order = np.lexsort((other, -score, owner))
    first = np.ones(len(order), bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    return order[first]


def _aji_counts(ov: Overlaps) -> tuple[int, int]:
    best = _best_per(ov.pair_true, ov.pair_iou, ov.pair_pred)
    p, t, inter = ov.pair_pred[best], ov.pair_true[best], ov.pair_inter[best]
    union = ov.pred_area[p] + ov.true_area[t] - inter
    unmatched_true = np.ones(len(ov.true_ids), bool)
    unmatched_true[t] = False
    unused_pred = np.ones(len(ov.pred_ids), bool)
    unused_pred[p] = False
    total_union = union.sum() + ov.true_area[unmatched_true].sum() + ov.pred_area[unused_pred].sum()
    return int(inter.sum()), int(total_union)


def _matches(ov: Overlaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique pairs with IoU > 0.5: (pred index, true index, IoU)."""
    iou = ov.pair_iou
    keep = iou > _MATCH_IOU
    return ov.pair_pred[keep], ov.pair_true[keep], iou[keep]


def _most_overlapping(ov: Overlaps, *, forward: bool) -> np.ndarray:
    """Pair index of the most-overlapping partner of each object (of one side) that has one."""
    owner, other = (ov.pair_pred, ov.pair_true) if forward else (ov.pair_true, ov.pair_pred)
    return _best_per(owner, ov.pair_inter.astype(np.float64), other)


def _object_dice_sum(ov: Overlaps, *, forward: bool) -> float:
    """Sum over one side's objects of area x Dice with its most-overlapping partner."""
    best = _most_overlapping(ov, forward=forward)
    p, t, inter = ov.pair_pred[best], ov.pair_true[best], ov.pair_inter[best]
    own_area = ov.pred_area[p] if forward else ov.true_area[t]
    dice_ = 2.0 * inter / (ov.pred_area[p] + ov.true_area[t])
    return float((own_area * dice_).sum())


def _object_hausdorff_sum(
    pred_seq: np.ndarray, true_seq: np.ndarray, ov: Overlaps, *, forward: bool
) -> tuple[float, int]:
    """Area-weighted Hausdorff sum over one side's objects that overlap something.

    ``pred_seq``/``true_seq`` are the sequential label images of :func:`_sequential`.
    Returns (sum of area x Hausdorff distance to the partner, sum of those areas).
    """
    pred_box = ndimage.find_objects(pred_seq)
    true_box = ndimage.find_objects(true_seq)
    total, area = 0.0, 0
    for k in _most_overlapping(ov, forward=forward):
        p, t = int(ov.pair_pred[k]), int(ov.pair_true[k])
        box = _union_box(pred_box[p], true_box[t])
        distance = _hausdorff(pred_seq[box] == p + 1, true_seq[box] == t + 1)
        own = int(ov.pred_area[p] if forward else ov.true_area[t])
        total, area = total + own * distance, area + own
    return total, area


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance (px) between two non-empty boolean masks."""
    pa, pb = np.argwhere(a), np.argwhere(b)
    da, _ = cKDTree(pb).query(pa)
    db, _ = cKDTree(pa).query(pb)
    return float(max(da.max(), db.max()))


def count_points(
    pred: np.ndarray,
    points: np.ndarray,
    *,
    pred_positive: Mapping[int, bool] | None = None,
    point_positive: np.ndarray | None = None,
    max_distance: float | None = None,
) -> Counts:
    """Detection (and Ki67) counts of a label image against point annotations.

    With ``max_distance`` (pixels), objects and points are matched one to one, minimising the
    total distance between object centroids and points, and a pair counts only when its
    distance is at most ``max_distance`` (the usual detection criterion: e.g. 4 µm). Without
    it, a point matches the object it falls in, and an object at most one point (the first
    in the given order). Points left over are misses, objects without a point false
    detections. Pixel and object metrics are not measurable from points.

    Parameters
    ----------
    pred : np.ndarray int (rows, cols)
        Predicted label image.
    points : np.ndarray float (n, 2)
        (row, col) of each annotated nucleus centre.
    pred_positive : mapping of object id -> bool, optional
    point_positive : np.ndarray bool (n,), optional
        Ki67 calls; the Ki67 counts are filled only when both are given.
    max_distance : float, optional
        Matching radius in pixels.
    """
    pred = np.asarray(pred)
    ids = np.unique(pred[pred > 0])
    points = np.asarray(points, float).reshape(-1, 2)
    if max_distance is None:
        obj, first_point = _points_inside(pred, points)
    else:
        obj, first_point = _points_near(pred, ids, points, max_distance)
    counts = Counts(det_tp=len(obj), n_pred=len(ids), n_true=len(points), pixel=False, objects=False)
    if pred_positive is None or point_positive is None:
        return counts
    det_p = np.searchsorted(ids, obj)
    return _with_ki67(
        counts,
        [bool(pred_positive.get(int(i), False)) for i in ids],
        [bool(v) for v in np.asarray(point_positive, bool)],
        det_p,
        first_point,
    )


def _points_inside(pred: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(object ids, point indices) of objects holding a point: the first point in each."""
    rc = np.round(points).astype(np.int64)
    inside = (rc >= 0).all(1) & (rc[:, 0] < pred.shape[0]) & (rc[:, 1] < pred.shape[1])
    hit = np.zeros(len(rc), np.int64)
    hit[inside] = pred[rc[inside, 0], rc[inside, 1]]
    obj, first_point = np.unique(hit, return_index=True)
    keep = obj > 0
    return obj[keep], first_point[keep]


def _points_near(
    pred: np.ndarray, ids: np.ndarray, points: np.ndarray, max_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(object ids, point indices) of the optimal one-to-one centroid-point pairs within reach."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(ids) == 0 or len(points) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    centroids = np.array(ndimage.center_of_mass(np.ones(pred.shape), labels=pred, index=ids)).reshape(-1, 2)
    distance = cdist(centroids, points)
    # Pairs beyond reach cost more than any set of pairs within it, so they are used only
    # where nothing else is left, and are then dropped.
    cost = np.where(distance <= max_distance, distance, 1e6 + distance)
    rows, cols = linear_sum_assignment(cost)
    ok = distance[rows, cols] <= max_distance
    order = np.argsort(ids[rows[ok]])
    return ids[rows[ok]][order], cols[ok][order]


def _score(pred: np.ndarray, true: np.ndarray, name: str) -> float:
    return count_instances(pred, true).scores()[name]


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Pixel Dice of the foregrounds (label > 0) of two label or binary images."""
    return _score(pred, true, "dice")


def precision(pred: np.ndarray, true: np.ndarray) -> float:
    """Pixel precision: share of predicted foreground that is true foreground."""
    return _score(pred, true, "precision")


def recall(pred: np.ndarray, true: np.ndarray) -> float:
    """Pixel recall (sensitivity): share of true foreground that is predicted."""
    return _score(pred, true, "recall")


def balanced_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Pixel balanced accuracy: mean of sensitivity and specificity."""
    return _score(pred, true, "balanced_accuracy")


def aji(pred: np.ndarray, true: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017) of two label images."""
    return _score(pred, true, "aji")


def object_dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Object Dice: area-weighted Dice of most-overlapping objects, both directions averaged."""
    return _score(pred, true, "object_dice")


def object_hausdorff(pred: np.ndarray, true: np.ndarray) -> float:
    """Object Hausdorff distance in pixels (area-weighted, both directions averaged)."""
    return _score(pred, true, "object_hausdorff")


def detection_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """Detection F1 with objects matched at IoU > 0.5."""
    return _score(pred, true, "f1_50")


def panoptic_quality(pred: np.ndarray, true: np.ndarray) -> float:
    """Panoptic quality: detection F1 at IoU > 0.5 times the mean IoU of matched pairs."""
    return _score(pred, true, "pq")
