"""Only what a user can cause is reworded: an object-store URI as -o is refused with a clear
message (segment writes to buckets: only a URI it cannot write to is refused), a slide's bad
bytes become a SlideError, and a bug in nucflow's own code surfaces as itself instead of "the
file may be truncated"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nucflow.cli import main
from nucflow.errors import InputError, SlideError
from nucflow.pipeline import segment
from nucflow.slide.reader import array_slide


@pytest.mark.parametrize("args", [
    ["evaluate", "--images", "a", "--truth", "b", "-o", "gs://bucket/report"],
    ["validate", "-o", "az://container/report"],
    ["train", "--masks", "m", "-o", "https://host/run"],
])
def test_uri_outputs_are_refused_by_every_command(tmp_path: Path, args: list[str], monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "is a URI: nucflow writes its outputs to a local or shared filesystem path only" in result.output
    assert list(tmp_path.iterdir()) == []  # no folder named s3: or gs:


def test_unwritable_uri_output_is_refused_by_segment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"-o 'https://host/out': .* https:// cannot be written"):
        segment(["x.svs"], "https://host/out")
    result = CliRunner().invoke(main, ["segment", "x.svs", "-o", "ftp://host/out"])
    assert result.exit_code == 2 and "ftp:// cannot be written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_bad_bytes_are_slide_errors_and_bugs_are_not_reworded(monkeypatch) -> None:
    slide = array_slide(np.zeros((64, 64, 3), np.uint8), mpp=0.5)

    def truncated(*args: object) -> np.ndarray:
        raise OSError("unexpected end of data")

    monkeypatch.setattr(slide._backend, "read_level", truncated)
    with pytest.raises(SlideError, match="unexpected end of data; the file may be truncated or corrupt"):
        slide.read(mpp=0.5, row=0, col=0, rows=8, cols=8)

    def bug(*args: object) -> np.ndarray:
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(slide._backend, "read_level", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        slide.read(mpp=0.5, row=0, col=0, rows=8, cols=8)
