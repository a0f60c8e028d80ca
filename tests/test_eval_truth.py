"""Ground-truth readers, format detection and pairing by name."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage import io as skio

from nucflow.errors import EvaluationError
from nucflow.evaluation import pair_files, read_labels, read_truth


@pytest.mark.parametrize(("name", "nuclei", "positive"), [("Bladder1", 188, 15), ("Lung1", 61, 11)])
def test_deepliif_counts(shared_data, name, nuclei, positive):
    truth = read_truth(shared_data / "ihc/deepliif/groundtruth" / f"{name}.png")
    assert truth.format == "deepliif"
    assert truth.count == nuclei
    assert sum(truth.positive.values()) == positive
    assert truth.labels.dtype == np.int32
    assert set(truth.positive) == set(range(1, nuclei + 1))
    # every positive nucleus lies on red pixels of the colour code
    rgb = skio.imread(truth.path)
    first_positive = min(k for k, v in truth.positive.items() if v)
    assert (rgb[truth.labels == first_positive] == (255, 0, 0)).all()


def test_deepliif_synthetic(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)
    rgb[5:8, 5:8] = (0, 0, 255)
    rgb[5:8, 8] = (0, 255, 0)
    rgb[0, 8:] = (0, 0, 255)
    skio.imsave(tmp_path / "t.png", rgb, check_contrast=False)
    truth = read_truth(tmp_path / "t.png")
    assert truth.format == "deepliif" and truth.count == 3
    assert sorted(truth.positive.values()) == [False, False, True]


def test_instance_labels_16_bit(tmp_path):
    labels = np.zeros((8, 8), np.uint16)
    labels[0:2, 0:2], labels[4:6, 4:6], labels[6:8, 0:2] = 1, 300, 7
    skio.imsave(tmp_path / "l.png", labels, check_contrast=False)
    truth = read_truth(tmp_path / "l.png")
    assert truth.format == "labels" and truth.positive is None
    np.testing.assert_array_equal(truth.labels, labels)


def test_binary_mask_components(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:2] = 255
    mask[2:4, 2:4] = 255  # touches the first only diagonally: a separate nucleus
    mask[6:8, 5:8] = 255
    tifffile.imwrite(tmp_path / "b.tif", mask)
    truth = read_truth(tmp_path / "b.tif")
    assert truth.format == "binary" and truth.count == 3


def test_format_flag_overrides_detection(tmp_path):
    labels = np.zeros((6, 6), np.uint8)
    labels[0:2, 0:4] = 5  # one id: detected as binary, but labels keeps the id
    skio.imsave(tmp_path / "one.png", labels, check_contrast=False)
    assert read_truth(tmp_path / "one.png").format == "binary"
    assert read_truth(tmp_path / "one.png", format="labels").labels.max() == 5


def test_points_csv(tmp_path):
    (tmp_path / "p.csv").write_text("x,y,positive\n3,1,1\n7.5,2,0\n")
    truth = read_truth(tmp_path / "p.csv")
    assert truth.format == "points" and truth.count == 2
    np.testing.assert_array_equal(truth.points, [[1, 3], [2, 7.5]])
    np.testing.assert_array_equal(truth.point_positive, [True, False])
    (tmp_path / "rc.csv").write_text("row,col\n")
    assert read_truth(tmp_path / "rc.csv").count == 0


def test_photo_fits_no_format(shared_data):
    with pytest.raises(EvaluationError, match=r"Bladder1.png.*fits none.*labels, binary, deepliif"):
        read_truth(shared_data / "ihc/deepliif/images/Bladder1.png")


def test_float_image_fits_no_format(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.random.default_rng(0).random((4, 4), np.float32))
    with pytest.raises(EvaluationError, match=r"f.tif is a float32 image.*fits none"):
        read_truth(tmp_path / "f.tif")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(EvaluationError, match=r"bad.png is not a readable image.*points"):
        read_truth(tmp_path / "bad.png")
    with pytest.raises(EvaluationError, match="does not exist"):
        read_truth(tmp_path / "nothing.png")


def test_unknown_format_flag(tmp_path):
    with pytest.raises(EvaluationError, match="unknown truth format 'polygons'"):
        read_truth(tmp_path / "x.png", format="polygons")


def test_points_errors(tmp_path):
    (tmp_path / "a.csv").write_text("u,v\n1,2\n")
    with pytest.raises(EvaluationError, match=r"need columns x,y or row,col"):
        read_truth(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("x,y,positive\n1,2,maybe\n")
    with pytest.raises(EvaluationError, match="positive must be 1/0"):
        read_truth(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("x,y\n1,abc\n")
    with pytest.raises(EvaluationError, match="non-numeric"):
        read_truth(tmp_path / "c.csv")


def test_read_labels_refuses_colour_code(shared_data):
    with pytest.raises(EvaluationError, match="label image or binary mask, not deepliif"):
        read_labels(shared_data / "ihc/deepliif/groundtruth/Lung1.png")


def _touch(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_pairing(tmp_path):
    images = _touch(tmp_path / "img", "a.png", "b.tif", "notes.txt")
    truth = _touch(tmp_path / "gt", "a.png", "b.csv")
    pairs = pair_files(images, truth, what="truth", suffixes=(".png", ".csv"))
    assert [(i.name, t.name) for i, t in pairs] == [("a.png", "a.png"), ("b.tif", "b.csv")]


def test_pairing_lists_unpaired_files(tmp_path):
    images = _touch(tmp_path / "img", "a.png", "b.png")
    truth = _touch(tmp_path / "gt", "a.png", "c.png")
    expected = r"2 file\(s\) have no partner: images without truth: .*img/b.png; truth without an image: .*gt/c.png"
    with pytest.raises(EvaluationError, match=expected):
        pair_files(images, truth, what="truth", suffixes=(".png",))


def test_pairing_folder_errors(tmp_path):
    images = _touch(tmp_path / "img", "a.png")
    with pytest.raises(EvaluationError, match="does not exist"):
        pair_files(tmp_path / "nope", images, what="truth", suffixes=(".png",))
    with pytest.raises(EvaluationError, match="holds no .png files"):
        pair_files(images, _touch(tmp_path / "empty"), what="truth", suffixes=(".png",))
    twice = _touch(tmp_path / "twice", "a.png", "a.tif")
    with pytest.raises(EvaluationError, match="two files named 'a'"):
        pair_files(twice, images, what="truth", suffixes=(".png",))
