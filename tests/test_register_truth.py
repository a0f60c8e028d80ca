"""Moving a displaced instance truth back onto its image (``nucflow.evaluation._register``)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from nucflow.errors import EvaluationError
from nucflow.evaluation._register import shift_labels, truth_offset
from nucflow.evaluation._truth import read_image, read_truth


def test_shift_labels_by_hand() -> None:
    labels = np.array([[1, 2, 0],
                       [3, 4, 0],
                       [0, 0, 5]])
    assert shift_labels(labels, (1, -1)).tolist() == [[0, 0, 0],
                                                      [2, 0, 0],
                                                      [4, 0, 0]]
    assert shift_labels(labels, (0, 0)).tolist() == labels.tolist()
    assert shift_labels(labels, (-2, -2)).tolist() == [[5, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert not shift_labels(labels, (3, 0)).any()  # moved off the image: nothing left, no wrap-around


def _nuclei_image(rows: int = 96, cols: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.full((rows, cols, 3), 235, np.uint8)  # glass
    labels = np.zeros((rows, cols), np.int32)
    centres = [(20, 20), (22, 60), (50, 35), (70, 75), (75, 15), (45, 80)]
    for k, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r, c), 7, shape=(rows, cols))
        rgb[rr, cc] = (70, 70, 150)  # hematoxylin blue
        labels[rr, cc] = k
    return rgb, labels


def test_truth_offset_finds_the_displacement_and_shift_labels_undoes_it() -> None:
    rgb, labels = _nuclei_image()
    displaced = shift_labels(labels, (3, -5))  # outlines 3 px below and 5 px left of their nuclei
    offset = truth_offset(rgb, displaced)
    assert offset == (-3, 5)
    assert np.array_equal(shift_labels(displaced, offset), labels)
    assert truth_offset(rgb, labels) == (0, 0)
    assert truth_offset(rgb, np.zeros_like(labels)) == (0, 0)
    with pytest.raises(EvaluationError, match="does not fit"):
        truth_offset(rgb, labels[:-1])


def test_deepliif_truth_is_displaced_and_glioma_truth_is_not(shared_data) -> None:
    """The displacement the README reports, on the real files (estimated from the images alone)."""
    deepliif = shared_data / "ihc" / "deepliif"
    found = {}
    for name in ("Bladder1", "Lung1"):
        rgb = read_image(deepliif / "images" / f"{name}.png")
        found[name] = truth_offset(rgb, read_truth(deepliif / "groundtruth" / f"{name}.png").labels)
    assert found == {"Bladder1": (0, 6), "Lung1": (-7, 0)}
    glioma = shared_data / "ihc" / "validation" / "glioma"
    image = sorted((glioma / "images").iterdir())[0]
    truth = next((glioma / "truth").glob(image.stem + ".*"))
    dy, dx = truth_offset(read_image(image), read_truth(truth).labels)
    assert abs(dy) <= 2 and abs(dx) <= 2  # 0.2 µm at its 0.11 µm/px
