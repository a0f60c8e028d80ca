"""Ground-truth readers (instance labels, binary masks, DeepLIIF colour code, points) and pairing.

Formats
-------
``labels``
    Instance label image (PNG/TIFF, one channel, integer): 0 = background, k = nucleus k.
``binary``
    Binary mask (one channel, two values, 0 = background): nuclei are its 4-connected
    components.
``deepliif``
    DeepLIIF colour code (RGB): red (255, 0, 0) = Ki67-positive nucleus, blue (0, 0, 255) =
    Ki67-negative nucleus, green = boundary lines, black = background. Nuclei are the
    4-connected components of red and of blue; their colour is their Ki67 call.
``points``
    Point annotations (BCData-style nucleus centres) as CSV with a header: ``x,y`` (image
    columns, rows) or ``row,col``, and optionally ``positive`` (1/0, true/false). They
    support detection and Ki67 scores only.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage import io as skio
from skimage.measure import label as connected_components

from nucflow.errors import EvaluationError

__all__ = [
    "IMAGE_SUFFIXES",
    "TRUTH_FORMATS",
    "TRUTH_SUFFIXES",
    "Truth",
    "detect_format",
    "pair_files",
    "read_image",
    "read_labels",
    "read_truth",
]

#: The ground-truth formats :func:`read_truth` understands.
TRUTH_FORMATS = ("labels", "binary", "deepliif", "points")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
TRUTH_SUFFIXES = (".png", ".tif", ".tiff", ".csv")

# A DeepLIIF pixel counts as red/blue/green when that channel is high and the others low;
# resampled or JPEG-touched masks carry a few off-palette pixels, hence the tolerance.
_HIGH, _LOW, _PALETTE_SHARE = 128, 128, 0.98


@dataclass(frozen=True)
class Truth:
    """Ground truth of one image.

    Attributes
    ----------
    path : Path
        The file it was read from.
    format : str
        One of :data:`TRUTH_FORMATS`.
    labels : np.ndarray int32 (rows, cols) or None
        Instance labels, 0 = background (None for point annotations).
    positive : dict[int, bool] or None
        Ki67 call per nucleus id (labels) or per point index (points); None when the truth
        carries no positivity.
    points : np.ndarray float64 (n, 2) or None
        (row, col) of each annotated nucleus, for point annotations only.
    """

    path: Path
    format: str
    labels: np.ndarray | None = None
    positive: dict[int, bool] | None = None
    points: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Number of annotated nuclei."""
        if self.points is not None:
            return len(self.points)
        assert self.labels is not None
        return len(np.unique(self.labels[self.labels > 0]))

    @property
    def point_positive(self) -> np.ndarray | None:
        """bool (n,): Ki67 call per point, for point annotations that carry it."""
        if self.points is None or self.positive is None:
            return None
        return np.array([self.positive[i] for i in range(len(self.points))], bool)


def read_truth(path: str | Path, *, format: str | None = None) -> Truth:
    """Read one ground-truth file, detecting its format unless ``format`` is given.

    Raises
    ------
    EvaluationError
        The file is unreadable, fits none of :data:`TRUTH_FORMATS`, or does not fit the
        format asked for.
    """
    path = Path(path)
    if format is not None and format not in TRUTH_FORMATS:
        raise EvaluationError(
            f"unknown truth format {format!r}; choose one of {', '.join(TRUTH_FORMATS)}"
        )
    if path.suffix.lower() == ".csv" or format == "points":
        return _read_points(path)
    data = _read_array(path)
    found = detect_format(data, path=path) if format is None else format
    if found == "deepliif":
        return _from_deepliif(data, path)
    gray = _single_channel(data, path, found)
    if found == "labels":
        return Truth(path=path, format="labels", labels=_as_labels(gray, path))
    return Truth(path=path, format="binary", labels=_components(gray > 0))


def detect_format(data: np.ndarray, *, path: Path) -> str:
    """The truth format an image array fits: ``deepliif``, ``binary`` or ``labels``."""
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        if _is_deepliif(data[..., :3]):
            return "deepliif"
        if not _is_gray(data[..., :3]):
            raise _unfit(path, "an RGB image whose colours are not the DeepLIIF code")
        data = data[..., 0]
    if data.ndim != 2:
        raise _unfit(path, f"an array of shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        raise _unfit(path, f"a {data.dtype} image (labels must be integers)")
    return "binary" if len(np.unique(data)) <= 2 else "labels"


def _unfit(path: Path, what: str) -> EvaluationError:
    return EvaluationError(
        f"ground truth {path} is {what}, which fits none of the truth formats "
        f"({', '.join(TRUTH_FORMATS)}); convert it or pass the format explicitly"
    )


def _read_array(path: Path) -> np.ndarray:
    try:
        return np.asarray(skio.imread(path))
    except FileNotFoundError:
        raise EvaluationError(f"ground truth {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise EvaluationError(
            f"ground truth {path} is not a readable image ({_first_line(exc)}); truth formats are "
            f"{', '.join(TRUTH_FORMATS)}"
        ) from None


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _is_deepliif(rgb: np.ndarray) -> bool:
    high, low = rgb >= _HIGH, rgb < _LOW
    black = low.all(-1)
    pure = (high[..., 0] & low[..., 1] & low[..., 2]) | (low[..., 0] & high[..., 1] & low[..., 2])
    pure |= low[..., 0] & low[..., 1] & high[..., 2]
    return bool((~black).any() and np.count_nonzero(pure | black) >= _PALETTE_SHARE * black.size)


def _is_gray(rgb: np.ndarray) -> bool:
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _single_channel(data: np.ndarray, path: Path, found: str) -> np.ndarray:
    if data.ndim == 3 and data.shape[-1] in (3, 4) and _is_gray(data[..., :3]):
        data = data[..., 0]
    if data.ndim != 2:
        raise _unfit(path, f"an array of shape {data.shape}, not a one-channel {found} image")
    return data


def _as_labels(gray: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(gray.dtype, np.integer) and gray.dtype != bool:
        raise _unfit(path, f"a {gray.dtype} image (labels must be integers)")
    if gray.min() < 0 or gray.max() > np.iinfo(np.int32).max:
        raise _unfit(path, f"a label image with ids from {gray.min()} to {gray.max()}")
    return gray.astype(np.int32)


def _components(mask: np.ndarray) -> np.ndarray:
    return connected_components(mask, connectivity=1).astype(np.int32)


def _from_deepliif(data: np.ndarray, path: Path) -> Truth:
    if data.ndim != 3 or data.shape[-1] not in (3, 4):
        raise _unfit(path, f"an array of shape {data.shape}, not an RGB DeepLIIF image")
    rgb = data[..., :3]
    high, low = rgb >= _HIGH, rgb < _LOW
    red = high[..., 0] & low[..., 1] & low[..., 2]
    blue = low[..., 0] & low[..., 1] & high[..., 2]
    positive = _components(red)
    negative = _components(blue)
    n_pos = int(positive.max())
    labels = np.where(negative > 0, negative + n_pos, positive).astype(np.int32)
    calls = {i: i <= n_pos for i in range(1, int(labels.max()) + 1)}
    return Truth(path=path, format="deepliif", labels=labels, positive=calls)


def _read_points(path: Path) -> Truth:
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows, fields = list(reader), reader.fieldnames or []
    except FileNotFoundError:
        raise EvaluationError(f"ground truth {path} does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvaluationError(f"point annotations {path} are not a readable CSV ({exc})") from None
    header = {k.strip().lower() for k in fields}
    if {"x", "y"} <= header:
        keys = ("y", "x")
    elif {"row", "col"} <= header:
        keys = ("row", "col")
    else:
        raise EvaluationError(
            f"point annotations {path} need columns x,y or row,col (found {sorted(header)}); "
            f"truth formats are {', '.join(TRUTH_FORMATS)}"
        )
    return _points_from_rows(rows, keys, has_positive="positive" in header, path=path)


def _points_from_rows(
    rows: list[dict[str, str]], keys: tuple[str, str], *, has_positive: bool, path: Path
) -> Truth:
    norm = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in rows]
    try:
        points = np.array([[float(r[keys[0]]), float(r[keys[1]])] for r in norm], float)
    except ValueError as exc:
        raise EvaluationError(f"point annotations {path} hold a non-numeric coordinate ({exc})") from None
    positive = None
    if has_positive:
        positive = {i: _parse_bool(r["positive"], path) for i, r in enumerate(norm)}
    return Truth(path=path, format="points", points=points.reshape(-1, 2), positive=positive)


def _parse_bool(value: str, path: Path) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "positive", "+"):
        return True
    if text in ("0", "false", "no", "negative", "-"):
        return False
    raise EvaluationError(f"point annotations {path}: positive must be 1/0 or true/false, got {value!r}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an RGB image as uint8 (rows, cols, 3); an unreadable file is an EvaluationError."""
    path = Path(path)
    try:
        data = np.asarray(skio.imread(path))
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"image {path} is not readable ({_first_line(exc)})") from None
    if data.ndim == 2:
        data = np.stack([data] * 3, axis=-1)
    if data.ndim != 3 or data.shape[-1] not in (3, 4) or data.dtype != np.uint8:
        raise EvaluationError(
            f"image {path} must be 8-bit RGB, got shape {data.shape} and dtype {data.dtype}"
        )
    return np.ascontiguousarray(data[..., :3])


def read_labels(path: str | Path) -> np.ndarray:
    """Read a predicted label image (labels or binary mask) as int32 (rows, cols)."""
    truth = read_truth(path)
    if truth.labels is None or truth.format == "deepliif":
        raise EvaluationError(
            f"prediction {path} must be a label image or binary mask, not {truth.format}"
        )
    return truth.labels


def pair_files(
    images: str | Path, others: str | Path, *, what: str, suffixes: tuple[str, ...]
) -> list[tuple[Path, Path]]:
    """Pair the images of folder ``images`` with the files of ``others`` by file stem.

    Raises
    ------
    EvaluationError
        A folder is missing or empty, a stem is ambiguous, or a file has no partner (the
        message lists every unpaired file).
    """
    left = _by_stem(Path(images), IMAGE_SUFFIXES, "images")
    right = _by_stem(Path(others), suffixes, what)
    no_partner = [str(p) for s, p in left.items() if s not in right]
    no_image = [str(p) for s, p in right.items() if s not in left]
    if no_partner or no_image:
        raise EvaluationError(
            f"images and {what} are paired by file name (stem), but "
            f"{len(no_partner) + len(no_image)} file(s) have no partner: "
            f"images without {what}: {', '.join(no_partner) or 'none'}; "
            f"{what} without an image: {', '.join(no_image) or 'none'}"
        )
    return [(left[s], right[s]) for s in sorted(left)]


def _by_stem(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvaluationError(f"{what} folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise EvaluationError(
            f"{what} folder {folder} holds no {'/'.join(suffixes)} files"
        )
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise EvaluationError(
                f"{what} folder {folder} holds two files named {p.stem!r}: {stems[p.stem].name} "
                f"and {p.name}; keep one"
            )
        stems[p.stem] = p
    return stems
