"""``evaluate`` end to end: the baselines on the real DeepLIIF tiles, given predictions, unet, CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io as skio

from nucflow.cli import main
from nucflow.errors import EvaluationError
from nucflow.evaluation import evaluate, write_report


@pytest.fixture(scope="module")
def deepliif_report(shared_data):
    root = shared_data / "ihc/deepliif"
    return evaluate(root / "images", root / "groundtruth", methods=["threshold", "deconvolution"], mpp=0.25)


def _row(report, method, image, scope="image"):
    return next(r for r in report.rows() if (r["method"], r["image"], r["scope"]) == (method, image, scope))


@pytest.mark.parametrize("method", ["threshold", "deconvolution"])
def test_baselines_on_deepliif(deepliif_report, method):
    bladder, lung = _row(deepliif_report, method, "Bladder1"), _row(deepliif_report, method, "Lung1")
    assert (bladder["n_true"], lung["n_true"]) == (188, 61)
    assert bladder["truth_format"] == "deepliif"
    # the paper's Otsu baseline: Dice 64.7 on its Ki67 set; here measured 0.55-0.68
    for row in (bladder, lung):
        assert 0.45 < row["dice"] < 0.8
        assert 0.2 < row["aji"] < 0.5
        assert 0.4 < row["object_dice"] < 0.75
        assert 5 < row["object_hausdorff"] < 30
        assert 0.0 < row["pq"] <= row["f1_50"] < 0.6
        assert 0.6 < row["ki67_accuracy"] <= 1.0
    assert bladder["li_true"] == pytest.approx(100 * 15 / 188)
    assert lung["li_true"] == pytest.approx(100 * 11 / 61)


def test_mean_and_pooled_rows(deepliif_report):
    bladder = _row(deepliif_report, "threshold", "Bladder1")
    lung = _row(deepliif_report, "threshold", "Lung1")
    mean = _row(deepliif_report, "threshold", "(all)", "mean")
    pooled = _row(deepliif_report, "threshold", "(all)", "pooled")
    assert mean["dice"] == pytest.approx((bladder["dice"] + lung["dice"]) / 2)
    assert pooled["n_true"] == 249
    # pooling weighs Bladder1's larger foreground more: between the two, not the mean
    assert min(bladder["dice"], lung["dice"]) < pooled["dice"] < max(bladder["dice"], lung["dice"])
    assert pooled["dice"] != pytest.approx(mean["dice"])


def test_report_files(deepliif_report, tmp_path):
    written = write_report(deepliif_report, tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["scores.csv", "scores.json", "scores.md"]
    rows = list(csv.DictReader(written["csv"].open()))
    assert len(rows) == 2 * (2 + 2)  # two methods x (two images + mean + pooled)
    assert {r["scope"] for r in rows} == {"image", "mean", "pooled"}
    data = json.loads(written["json"].read_text())  # strict JSON: NaN written as null
    assert data["settings"]["mpp"] == 0.25 and len(data["rows"]) == 8
    markdown = written["markdown"].read_text()
    assert "| threshold |" in markdown and "| deconvolution |" in markdown
    assert "Mean over images" in markdown and "Pooled over all images" in markdown


@pytest.fixture
def tiny_set(tmp_path):
    """Two 32x32 tiles with two nuclei each: images, truth labels and predictions."""
    rng = np.random.default_rng(1)
    for folder in ("img", "gt", "pred"):
        (tmp_path / folder).mkdir()
    for name in ("a", "b"):
        rgb = rng.integers(200, 240, (32, 32, 3)).astype(np.uint8)
        labels = np.zeros((32, 32), np.uint16)
        labels[4:12, 4:12], labels[18:28, 16:26] = 1, 2
        rgb[labels > 0] = (90, 70, 140)
        skio.imsave(tmp_path / "img" / f"{name}.png", rgb, check_contrast=False)
        skio.imsave(tmp_path / "gt" / f"{name}.png", labels, check_contrast=False)
        skio.imsave(tmp_path / "pred" / f"{name}.tif", labels[:, ::-1].copy(), check_contrast=False)
    return tmp_path


def test_given_predictions_need_no_mpp(tiny_set):
    calls = []
    report = evaluate(tiny_set / "img", tiny_set / "gt", pred=tiny_set / "gt", progress=lambda *a: calls.append(a))
    assert calls == [(1, 2, "pred a"), (2, 2, "pred b")]
    assert report.methods == ("pred",)
    assert all(r["dice"] == 1.0 and r["aji"] == 1.0 for r in report.rows())
    mirrored = evaluate(tiny_set / "img", tiny_set / "gt", pred=tiny_set / "pred")
    assert _row(mirrored, "pred", "(all)", "pooled")["dice"] < 1.0


def test_point_truth(tiny_set):
    for name in ("a", "b"):
        (tiny_set / "gt" / f"{name}.png").unlink()
        (tiny_set / "gt" / f"{name}.csv").write_text("row,col,positive\n8,8,1\n23,21,0\n2,30,0\n")
    report = evaluate(tiny_set / "img", tiny_set / "gt", methods=["threshold"], mpp=0.5)
    row = _row(report, "threshold", "a")
    assert row["truth_format"] == "points"
    # both nuclei found, the third point lies on background: F1 = 2*2 / (2*2 + 0 + 1)
    assert row["f1_50"] == pytest.approx(0.8)
    assert math.isnan(row["dice"]) and math.isnan(row["aji"])


def test_unet_with_a_tiny_model(tiny_set):
    import torch

    from nucflow.models import ModelCard, build_unet, save_model

    card = ModelCard(ngf=4, depth=3, norm="batch", dropout=0.0, dropout_blocks=0, mpp=0.5, tile_size=64)
    torch.manual_seed(0)
    save_model(tiny_set / "model", build_unet(card), card)
    report = evaluate(tiny_set / "img", tiny_set / "gt", methods=["unet"], model=tiny_set / "model", mpp=0.25)
    row = _row(report, "unet", "a")
    assert row["n_true"] == 2 and 0.0 <= row["dice"] <= 1.0
    assert report.settings["model"]["unet"]


def test_no_method_scores_the_bundled_model(tiny_set):
    from nucflow.models import default_model_path, load_model

    report = evaluate(tiny_set / "img", tiny_set / "gt", mpp=0.25)
    assert report.methods == ("unet",)
    assert report.settings["model"]["unet"] == load_model(default_model_path()).card.model_id


def test_errors(tiny_set):
    img, gt = tiny_set / "img", tiny_set / "gt"
    with pytest.raises(EvaluationError, match="give --mpp .* to run unet"):  # no method: the model
        evaluate(img, gt)
    with pytest.raises(EvaluationError, match="plain tiles carry no resolution: give --mpp"):
        evaluate(img, gt, methods=["threshold"])
    with pytest.raises(EvaluationError, match="unknown method 'otsu'"):
        evaluate(img, gt, methods=["otsu"], mpp=0.25)
    with pytest.raises(EvaluationError, match="--mpp must be a positive number"):
        evaluate(img, gt, methods=["threshold"], mpp=-1.0)
    with pytest.raises(EvaluationError, match="unknown truth format 'xml'"):
        evaluate(img, gt, pred=gt, truth_format="xml")
    missing = r"cannot evaluate unet: model weights .*missing.safetensors does not exist"
    with pytest.raises(EvaluationError, match=missing):
        evaluate(img, gt, methods=["unet"], model=tiny_set / "missing.safetensors", mpp=0.25)


def test_prediction_size_mismatch(tiny_set):
    skio.imsave(tiny_set / "pred" / "a.tif", np.zeros((8, 8), np.uint16), check_contrast=False)
    with pytest.raises(EvaluationError, match=r"prediction for .*a.png is 8x8 px but the image is 32x32"):
        evaluate(tiny_set / "img", tiny_set / "gt", pred=tiny_set / "pred")


def test_truth_size_mismatch(tiny_set):
    skio.imsave(tiny_set / "gt" / "b.png", np.zeros((16, 32), np.uint16), check_contrast=False)
    with pytest.raises(EvaluationError, match=r"truth .*b.png is 16x32 px but image .*b.png is 32x32"):
        evaluate(tiny_set / "img", tiny_set / "gt", pred=tiny_set / "pred")


def test_cli(tiny_set):
    runner = CliRunner()
    args = ["evaluate", "--images", str(tiny_set / "img"), "--truth", str(tiny_set / "gt")]
    result = runner.invoke(main, [*args, "--pred", str(tiny_set / "pred"), "--method", "threshold",
                                  "--method", "deconvolution", "--mpp", "0.5", "-o", str(tiny_set / "rep")])
    assert result.exit_code == 0, result.output
    assert "pooled" in result.output and "deconvolution" in result.output
    assert (tiny_set / "rep" / "scores.md").read_text().count("| threshold |") == 2
    failed = runner.invoke(main, [*args, "--method", "threshold", "-o", str(tiny_set / "rep2")])
    assert failed.exit_code == 1
    assert "give --mpp" in failed.output
    assert not (tiny_set / "rep2").exists()


def test_displaced_truth_is_recorded_and_warned(deepliif_report, shared_data, caplog):
    """DeepLIIF's outlines sit 1.5-1.75 µm from their nuclei (nucflow.evaluation._register):
    every report records each instance truth's offset, and a displaced one is warned about."""
    assert deepliif_report.settings["truth_offsets_px"] == {"Bladder1": [0, 6], "Lung1": [-7, 0]}
    root = shared_data / "ihc/deepliif"
    with caplog.at_level("WARNING", logger="nucflow"):
        evaluate(root / "images", root / "groundtruth", methods=["threshold"], mpp=0.25)
    warned = [r.getMessage() for r in caplog.records if "truth outlines sit" in r.getMessage()]
    assert len(warned) == 2
    assert "Bladder1: its truth outlines sit 1.5 µm" in warned[0] and "0 rows, 6 columns" in warned[0]
    assert "Lung1: its truth outlines sit 1.8 µm" in warned[1]


def test_the_model_runs_on_a_gpu_when_pytorch_sees_one_and_the_baselines_on_the_cpu() -> None:
    import torch

    from nucflow.evaluation._evaluate import _model_device

    assert _model_device("unet") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert _model_device("threshold") == _model_device("deconvolution") == "cpu"
