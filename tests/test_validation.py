"""``nucflow validate``: models and baselines over several real validation sets, one table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from nucflow.cli import main
from nucflow.errors import EvaluationError
from nucflow.evaluation import load_validation_sets, validate


@pytest.fixture(scope="module")
def data_root(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with DeepLIIF's two tiles and five EndoNuke tiles (links to the real files)."""
    root = tmp_path_factory.mktemp("data")
    (root / "deepliif").symlink_to(shared_data / "ihc/deepliif")
    for kind, suffix in (("images", ".png"), ("points", ".csv")):
        folder = root / "endonuke" / kind
        folder.mkdir(parents=True)
        names = sorted(p.stem for p in (shared_data / "ihc/validation/endonuke/images").iterdir())[:5]
        for name in names:
            (folder / f"{name}{suffix}").symlink_to(shared_data / "ihc/validation/endonuke" / kind / f"{name}{suffix}")
    (root / "sets.yaml").write_text(
        "sets:\n"
        "  deepliif: {images: deepliif/images, truth: deepliif/groundtruth, mpp: 0.25, truth_format: deepliif}\n"
        "  endonuke: {images: endonuke/images, truth: endonuke/points, mpp: 0.5, truth_format: points}\n"
    )
    return root


def _points(data_root: Path) -> int:
    """The EndoNuke points of the data root: one CSV row (after the header) per nucleus."""
    return sum(len(f.read_text().splitlines()) - 1 for f in (data_root / "endonuke" / "points").iterdir())


def test_validation_table(data_root: Path, tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    other = tmp_path / "second" / "model.safetensors"
    other.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        other.with_suffix(suffix).write_bytes(tiny_model.with_suffix(suffix).read_bytes())
    sets = load_validation_sets(data_root / "sets.yaml", data=data_root)
    with caplog.at_level("WARNING", logger="nucflow"):
        report = validate(sets, methods=["threshold"], models=[tiny_model, other])
    # DeepLIIF's displaced outlines are measured and warned about once per set, not per method
    warned = sorted(r.getMessage().split(":")[0] for r in caplog.records if "truth outlines sit" in r.getMessage())
    assert warned == ["Bladder1", "Lung1"]
    methods = ["threshold", f"unet[{tiny_model.parent.name}]", "unet[second]", "unet[mean]"]
    assert [(r["set"], r["method"]) for r in report.rows] == [
        *((s, m) for s in ("deepliif", "endonuke") for m in methods[:3]),
        ("deepliif", "unet[mean]"), ("endonuke", "unet[mean]"),
        *(("overall", m) for m in methods),
    ]
    deepliif = report.value("deepliif", "threshold", "aji")
    assert 0.1 < deepliif < 0.6
    # points give detection only; instances give everything; the overall row is the mean over sets
    assert math.isnan(report.value("endonuke", "threshold", "aji"))
    f1 = [report.value(s, "threshold", "f1_50") for s in ("deepliif", "endonuke")]
    assert report.value("overall", "threshold", "f1_50") == pytest.approx(sum(f1) / 2)
    assert report.value("overall", "threshold", "aji") == pytest.approx(deepliif)
    # the same weights twice: the mean equals each, the spread is zero
    mean = next(r for r in report.rows if r["set"] == "overall" and r["method"] == "unet[mean]")
    assert mean["dice_sd"] == pytest.approx(0.0, abs=1e-12)
    second = report.value("deepliif", "unet[second]", "dice")
    assert report.value("deepliif", "unet[mean]", "dice") == pytest.approx(second)
    # each set's annotated nuclei: DeepLIIF's 188 + 61 outlines (data README), one per EndoNuke point
    points = _points(data_root)
    nuclei = {(r["set"], r["method"]): r["nuclei"] for r in report.rows}
    assert {nuclei["deepliif", m] for m in methods} == {249}
    assert {nuclei["endonuke", m] for m in methods} == {points} and points > 0
    assert {nuclei["overall", m] for m in methods} == {249 + points}
    # Ki67 labelling-index error where positivity is known (DeepLIIF), not on points without it
    assert report.value("deepliif", "threshold", "li_error") >= 0.0
    assert math.isnan(report.value("endonuke", "threshold", "li_error"))


def test_validate_cli(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["validate", "--sets", str(data_root / "sets.yaml"), "--data", str(data_root),
                                       "--method", "threshold", "--method", "deconvolution", "--set", "endonuke",
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    points = _points(data_root)
    assert f"| endonuke | deconvolution | 5 | {points} |" in result.output
    rows = list(csv.DictReader((out / "validation.csv").open()))
    assert [(r["set"], r["method"]) for r in rows] == [("endonuke", "threshold"), ("endonuke", "deconvolution"),
                                                       ("overall", "threshold"), ("overall", "deconvolution")]
    assert json.loads((out / "validation.json").read_text())["rows"][0]["aji"] is None
    bad = CliRunner().invoke(main, ["validate", "--sets", str(data_root / "sets.yaml"), "--data", str(tmp_path),
                                    "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "does not exist; point --data at the data root" in bad.output
    with pytest.raises(EvaluationError, match="unknown validation set"):
        load_validation_sets(data_root / "sets.yaml", data=data_root, only=["nope"])


def test_model_labels_stay_apart_for_checkpoints_of_several_runs() -> None:
    from nucflow.evaluation import model_labels

    assert model_labels(["runs/s0/model.safetensors", "runs/s1/model.safetensors"]) == ["s0", "s1"]
    # the same step of two runs: one folder name would merge two seeds into one row
    assert model_labels(["runs/s0/at/850/model.safetensors", "runs/s1/at/850/model.safetensors"]) == [
        "s0/at/850", "s1/at/850"]
