"""Never a wrong table with exit 0, every failure one clear line (issue 15, part A).

Real processes (the ``nucflow`` command in a subprocess, its own local Ray), real slide
files written here, and the checks that need no Ray called directly. Two Ray runs in all.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from nucflow.atomic import atomic_path, is_partial, remove_partials
from nucflow.errors import InputError, ModelError, PreflightError, SlideError
from nucflow.models import load_model
from nucflow.pipeline import load_segment_config
from nucflow.pipeline.plan import output_names, recorded_identity
from nucflow.pipeline.preflight import preflight
from nucflow.slide import open_slide
from nucflow.slide.synthetic import demo_ihc_image, write_svs

_ANSI = "\x1b["
#: The tests that run the cohort (and the rerun) in real processes: seconds on a quiet machine,
#: but Ray's start and eight slides' planning took over 10 minutes on a 2-core machine shared
#: with training jobs (load average 30-40). A bound, not an expectation.
_RUNS_TIMEOUT = pytest.mark.timeout(2400)


def _nucflow(*args: str | Path, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    """``nucflow ARGS`` in a fresh process with its own local Ray (short temp dir: socket paths)."""
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="nf-rel-")}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "nucflow", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _slide(path: Path, *, flip: bool = False, repeats: int = 1) -> Path:
    rgb = demo_ihc_image(repeats=repeats)
    return write_svs(path, np.ascontiguousarray(rgb[::-1] if flip else rgb), mpp=0.5)


# --- output folder names ---------------------------------------------------------------


def test_output_names_are_unique_for_distinct_paths(tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    e_acute, e_grave = coll / "my slide é.ome.tif", coll / "my slide è.ome.tif"
    a_svs, a_tif, upper = coll / "a.svs", coll / "a.tif", tmp_path / "other" / "A.svs"
    plain = tmp_path / "CMU-1.svs"
    names = output_names([e_acute, e_grave, a_svs, a_tif, upper, plain])
    assert len({n.lower() for n in names}) == 6
    assert names[0].startswith("my_slide-") and names[1].startswith("my_slide-")
    # a.svs, a.tif and A.svs (one folder on a case-insensitive file system): three names
    assert all(n.split("-")[0].lower() == "a" for n in names[2:5])
    assert names[5] == "CMU-1"  # a plain, unique name stays as it was
    # Stable: the same paths get the same names in every run.
    assert output_names([e_grave, e_acute]) == [names[1], names[0]]
    # A slide literally named like another's hashed folder is refused, not merged.
    twin = coll / f"{names[2]}.svs"
    with pytest.raises(InputError, match="would share the output folder"):
        output_names([a_svs, a_tif, twin])


def test_a_folder_from_an_earlier_run_keeps_its_name(tmp_path: Path) -> None:
    first, second = tmp_path / "d1" / "same.svs", tmp_path / "d2" / "same.svs"
    out = tmp_path / "out"
    (out / "same").mkdir(parents=True)
    (out / "same" / "summary.json").write_text(json.dumps({"path": str(first)}))
    # d1's slide was segmented alone (plain name); run together with d2, it keeps that folder.
    together = output_names([first, second], out)
    assert together[0] == "same" and together[1].startswith("same-")
    # And the other way: d2's slide, first segmented beside d1's (hashed name), keeps its folder alone.
    (out / together[1]).mkdir()
    (out / together[1] / "summary.json").write_text(json.dumps({"path": str(second)}))
    assert output_names([second], out) == [together[1]]
    assert output_names([second]) == ["same"]  # (a fresh output folder: the plain name)


# --- checks before Ray starts ------------------------------------------------------------


def test_cli_reports_every_problem_before_starting_ray(tmp_path: Path) -> None:
    slide = _slide(tmp_path / "s.svs")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _nucflow(
        "segment", slide, tmp_path / "missing*.svs", "-o", blocker / "out", "--method", "threshold",
        "--stain", "ki76", "--mpp", "nan", "-q",
    )
    assert result.returncode == 1
    text = result.stdout + result.stderr
    lines = [line for line in text.splitlines() if line.startswith("  - ")]
    assert len(lines) == 4, text
    assert "nothing was started: 4 problem(s)" in text
    assert "no slide matches" in text and "unknown stain profile 'ki76'" in text
    assert "--mpp must be a positive number" in text and "cannot be written" in text
    assert "Traceback" not in text and "Ray" not in text  # refused before Ray started


def test_preflight_stain_keys_model_card_and_mpp(
    tmp_path: Path, small_svs: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dataclasses import replace

    from nucflow.pipeline.image import method_spec

    stain = tmp_path / "mine.yaml"
    stain.write_text("threshold: 0.5\ndab_treshold: 0.2\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(tiny_model.read_bytes())
    (model / "model.json").write_bytes(bytes(range(256)) * 4)  # binary, not JSON
    config = replace(load_segment_config(), stain_profile=str(stain), model=str(model))
    with pytest.raises(PreflightError) as caught:  # small_svs says 0.5 µm/px; --mpp 20 is 40x that
        preflight([small_svs], tmp_path / "out", config=config, mpp=20.0, force_mpp=False, load_spec=method_spec)
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert "dab_treshold" in problems[0] and "mine.yaml" in problems[0]
    assert "model card" in problems[1] and "not text" in problems[1]
    assert "40x coarser than the 0.5 µm/px" in problems[2] and "--force-mpp" in problems[2]
    assert all("\n" not in p for p in problems)

    ok = replace(load_segment_config(), method="threshold")
    with caplog.at_level(logging.WARNING):
        ready = preflight([small_svs], tmp_path / "out", config=ok, mpp=0.6, force_mpp=False, load_spec=method_spec)
    assert ready.names == ["small"]
    assert "--mpp 0.6 overrides the resolution in the metadata of 1 slide(s): small.svs (0.5 µm/px)" in caplog.text
    forced = preflight([small_svs], tmp_path / "out", config=ok, mpp=20.0, force_mpp=True, load_spec=method_spec)
    assert forced.paths == [small_svs.resolve()]


def test_binary_model_card_is_a_model_error(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(tiny_model.read_bytes())
    (tmp_path / "model.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 20)
    with pytest.raises(ModelError, match="not text"):
        load_model(tmp_path / "model.safetensors")


def test_empty_truncated_and_renamed_slides_say_so(tmp_path: Path, small_svs: Path) -> None:
    data = small_svs.read_bytes()
    (tmp_path / "empty.svs").write_bytes(b"")
    (tmp_path / "cut.svs").write_bytes(data[:3000])
    (tmp_path / "head.svs").write_bytes(data[:8])  # a TIFF header and nothing else
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "photo.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "photo.svs").write_bytes((tmp_path / "photo.png").read_bytes())
    expected = {"empty": r"is empty \(0 bytes\)", "cut": "truncated", "head": "truncated", "photo": "holds a PNG file"}
    for stem, words in expected.items():
        with pytest.raises(SlideError, match=words):
            open_slide(tmp_path / f"{stem}.svs")


# --- partial files ----------------------------------------------------------------------


def test_partials_of_dead_writers_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead = tmp_path / ".nuclei.0123abcd.partial.parquet"
    dead.write_bytes(b"half a table")
    result = tmp_path / "nuclei.parquet"
    result.write_bytes(b"a table")
    # A live writer in another process holds its temporary file (and its lock).
    script = (
        "import sys, time\nfrom nucflow.atomic import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'overlay.png')!r}) as tmp:\n"
        "    tmp.write_bytes(b'x'); print(tmp, flush=True); sys.stdin.read()\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        live = Path(writer.stdout.readline().strip())
        assert is_partial(live) and is_partial(dead) and not is_partial(result)
        assert remove_partials(tmp_path) == [dead]
        assert live.exists() and result.exists()
    finally:
        writer.communicate("", timeout=60)
    assert (tmp_path / "overlay.png").read_bytes() == b"x"  # the live writer finished undisturbed
    assert not live.exists()


def test_a_failed_write_leaves_no_partial(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "summary.json") as tmp:
        tmp.write_text("{")
        raise RuntimeError("killed midway")
    assert list(tmp_path.iterdir()) == []


# --- whole runs: names, identity, failures, partials -------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    """One real CLI run over slides that used to collide or fail badly, and its output."""
    root = tmp_path_factory.mktemp("cohort")
    inp, out = root / "in", root / "out"
    slides = {
        "d1": _slide(inp / "d1" / "same.svs"),
        "other": _slide(inp / "d1" / "other.svs", flip=True),
        "acute": _slide(inp / "coll" / "my slide é.svs"),
    }
    rgb = demo_ihc_image(repeats=1)[::-1, ::-1]
    tifffile.imwrite(inp / "coll" / "my slide è.tif", np.ascontiguousarray(rgb), resolution=(20000, 20000),
                     resolutionunit="CENTIMETER")  # a plain TIFF at 0.5 µm/px
    slides["grave"] = inp / "coll" / "my slide è.tif"
    (inp / "bad").mkdir()
    (inp / "bad" / "empty.svs").write_bytes(b"")
    corrupt = _slide(inp / "bad" / "corrupt.svs", repeats=4)  # thumbnail from level 1, tiles from level 0
    with tifffile.TiffFile(corrupt) as tif:
        spans = list(zip(tif.pages[0].dataoffsets, tif.pages[0].databytecounts, strict=True))
    with open(corrupt, "r+b") as handle:
        for offset, count in spans:
            handle.seek(offset)
            handle.write(b"\0" * count)
    args = [*slides.values(), inp / "bad" / "empty.svs", corrupt]
    result = _nucflow("segment", *args, "-o", out, "--method", "threshold", "-q")
    return inp, out, slides, result


@_RUNS_TIMEOUT
def test_colliding_names_get_their_own_folders(cohort) -> None:
    _, out, slides, result = cohort
    csv = pd.read_csv(out / "summary.csv").set_index("path")
    ok = csv[csv["status"] == "ok"]
    assert set(ok.index) == {str(p.resolve()) for p in slides.values()}, result.stderr
    assert ok["slide"].is_unique
    assert csv.loc[str(slides["d1"].resolve()), "slide"] == "same"
    assert csv.loc[str(slides["acute"].resolve()), "slide"] != csv.loc[str(slides["grave"].resolve()), "slide"]
    for path, row in ok.iterrows():
        summary = json.loads((out / row["slide"] / "summary.json").read_text())
        assert summary["path"] == path and summary["slide_identity"]["path"] == path
        attrs = zarr.open_group(str(out / row["slide"] / "probability.zarr"), mode="r").attrs
        assert attrs["slide_identity"] == summary["slide_identity"]
    # The flipped copy really is another slide's table, not a shared one.
    acute, grave = (csv.loc[str(slides[k].resolve()), "slide"] for k in ("acute", "grave"))
    assert (out / acute / "nuclei.parquet").read_bytes() != (out / grave / "nuclei.parquet").read_bytes()


@_RUNS_TIMEOUT
def test_failures_are_one_clear_line_with_a_log(cohort) -> None:
    _, out, _, result = cohort
    assert result.returncode == 1
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed_lines) == 2, result.stderr  # each failed slide once
    assert "2 slide(s) failed" in result.stderr
    csv = pd.read_csv(out / "summary.csv").set_index("slide")
    empty, corrupt = csv.loc["empty"], csv.loc["corrupt"]
    assert empty["error"].startswith("SlideError: slide ") and "is empty (0 bytes)" in empty["error"]
    assert corrupt["error"].startswith("inference: SlideError: cannot read region")
    for row in (empty, corrupt):
        error = row["error"]
        assert "\n" not in error and _ANSI not in error and "RayTaskError" not in error and "Traceback" not in error
        assert sum(error in line for line in failed_lines) == 1
        log = Path(row["error_log"])
        assert log == out / row.name / "error.log" and f"[details: {log}]" in result.stderr
        text = log.read_text()
        assert "Traceback" in text and 'File "' in text and _ANSI not in text and error in text


@pytest.fixture(scope="module")
def rerun(cohort):
    """A second run into the same output: a slide of the same name from another folder, one
    whose earlier run was killed before finishing, and a left-over partial file."""
    inp, out, slides, _ = cohort
    stranger = _slide(inp / "d2" / "same.svs", flip=True)
    other_stranger = _slide(inp / "d2" / "other.svs")
    (out / "other" / "summary.json").unlink()  # as if killed after inference: only the map
    acute = pd.read_csv(out / "summary.csv").set_index("path").loc[str(slides["acute"].resolve()), "slide"]
    leftover = out / acute / ".nuclei.0123abcd.partial.parquet"
    leftover.write_bytes(b"half a table")
    (out / ".summary.89abcdef.partial.csv").write_bytes(b"slide,")
    result = _nucflow("segment", stranger, other_stranger, slides["acute"], slides["grave"], "-o", out,
                      "--method", "threshold", "-q")
    return out, result, leftover


@_RUNS_TIMEOUT
def test_another_slide_of_the_same_name_is_refused_not_skipped(rerun, cohort) -> None:
    out, result, _ = rerun
    _, _, slides, _ = cohort
    assert result.returncode == 1
    assert not [line for line in result.stdout.splitlines() if line.startswith(("same:", "other:"))]  # not done
    refused = [line for line in result.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(refused) == 2, result.stderr
    for line in refused:
        assert "holds results of another slide" in line and "--overwrite" in line and "-o" in line
    csv = pd.read_csv(out / "summary.csv").set_index("slide")
    assert csv.loc["same", "path"].endswith("d2/same.svs") and csv.loc["same", "status"] == "failed"
    assert pd.isna(csv.loc["same", "nuclei"])  # never the other slide's numbers
    # The first slide's outputs are untouched, and its identity is still the one recorded.
    identity = recorded_identity(out / "same")
    assert identity is not None and identity["path"] == str(slides["d1"].resolve())
    assert not (out / "same" / "error.log").exists()


@_RUNS_TIMEOUT
def test_partials_are_cleaned_on_the_next_run(rerun) -> None:
    out, result, leftover = rerun
    assert not leftover.exists()
    assert not (out / ".summary.89abcdef.partial.csv").exists()
    csv = pd.read_csv(out / "summary.csv")
    assert (csv["status"] == "skipped").sum() == 2, result.stdout  # é and è: same folders, same slides
    assert not [p for p in out.rglob("*") if is_partial(p)]
