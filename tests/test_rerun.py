"""A rerun with nothing to do decides so from small files only (issue 13, target 4).

The request key (:func:`nucflow.pipeline.outputs.request_key`) must change with every input
of a slide's configuration hash and only with them; a slide counts as finished only with the
same key on the same slide bytes. No Ray here: the end-to-end no-op rerun (a real finished
run, rerun in a fresh process) is ``test_segment.py::test_noop_rerun_finishes_without_starting_ray``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucflow.atomic import write_json
from nucflow.pipeline import load_segment_config
from nucflow.pipeline.outputs import finished_run, record_request, request_key, slide_identity

#: The modules a no-op rerun must not load.
HEAVY = ("torch", "ray", "dask", "skimage", "geopandas", "scipy", "matplotlib", "zarr", "numpy")


@pytest.fixture
def config():
    return replace(load_segment_config(), method="unet")


def _key(config, **options) -> str | None:
    return request_key(config, **{"mpp": None, "force_mpp": False, **options})


def test_request_key_follows_every_input_and_nothing_else(config, tiny_model: Path, tmp_path: Path) -> None:
    model = replace(config, model=str(tiny_model))
    base = _key(model)
    assert base is not None and base == _key(model)
    # The same model files elsewhere, given as their folder: the same request.
    folder = tmp_path / "same-model"
    folder.mkdir()
    shutil.copy(tiny_model, folder / "model.safetensors")
    shutil.copy(tiny_model.with_suffix(".json"), folder / "model.json")
    assert _key(replace(config, model=str(folder))) == base
    roi = tmp_path / "roi.geojson"
    roi.write_text('{"type": "FeatureCollection", "features": []}')
    changed = {
        "setting": _key(replace(model, tissue=replace(model.tissue, min_saturation=0.1))),
        "tta": _key(replace(model, inference=replace(model.inference, tta="flips"))),
        "stain": _key(replace(model, stain_profile="her2")),
        "mpp": _key(model, mpp=0.5),
        "force": _key(model, mpp=0.5, force_mpp=True),
        "roi": _key(model, roi=roi, roi_exclude=("Ignore*",)),
        "method": _key(replace(model, method="threshold")),
    }
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # other weights, same card
    changed["weights"] = _key(replace(config, model=str(folder)))
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    shutil.copy(tiny_model, weights)
    (folder / "model.json").write_text(json.dumps({**card, "mpp": 0.25}))  # same weights, other card
    changed["card"] = _key(replace(config, model=str(folder)))
    assert None not in changed.values(), changed
    assert len({base, *changed.values()}) == len(changed) + 1, changed
    # A stain profile file counts by its content.
    profile = tmp_path / "mine.yaml"
    profile.write_text("stain_profile: ki67\n")
    first = _key(replace(model, stain_profile=str(profile)))
    profile.write_text("stain_profile: ki67\nmin_area_um2: 12\n")
    assert first is not None and _key(replace(model, stain_profile=str(profile))) != first
    # Regions count by content: a ROI file edited in place, or a file of a ROI folder.
    first = _key(model, roi=roi)
    roi.write_text('{"type": "FeatureCollection", "features": [], "edited": true}')
    assert first is not None and _key(model, roi=roi) != first
    (tmp_path / "rois").mkdir()
    (tmp_path / "rois" / "a.geojson").write_text("{}")
    first = _key(model, roi=tmp_path / "rois")
    (tmp_path / "rois" / "b.geojson").write_text("{}")
    assert first is not None and _key(model, roi=tmp_path / "rois") != first
    # Files that cannot be read: no key (the full planning reports why).
    assert _key(replace(config, model=str(tmp_path / "missing.safetensors"))) is None
    assert _key(replace(model, stain_profile=str(tmp_path / "missing.yaml"))) is None
    assert _key(model, roi=tmp_path / "missing.geojson") is None


def _finished_cohort(tmp_path: Path, key: str, n: int = 3) -> tuple[list[Path], Path]:
    """``n`` small PNG images and an output folder whose slides are finished with ``key``."""
    rng = np.random.default_rng(0)
    out, slides = tmp_path / "out", []
    for i in range(n):
        path = tmp_path / "images" / f"image_{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        slides.append(path)
        write_json(out / path.stem / "summary.json",
                   {"slide": path.stem, "path": str(path), "slide_identity": slide_identity(path), "nuclei": i})
        record_request(out / path.stem, key)
    return slides, out


def test_finished_run_needs_every_slide_finished_with_the_key_on_the_same_bytes(tmp_path: Path) -> None:
    slides, out = _finished_cohort(tmp_path, "k1")
    found = finished_run([str(tmp_path / "images" / "*.png")], out, key="k1")
    assert found is not None and [f.key for f in found] == ["image_0", "image_1", "image_2"]
    assert [f.summary["nuclei"] for f in found] == [0, 1, 2]
    assert finished_run(slides, out, key="k2") is None  # another request
    assert finished_run([*slides, tmp_path / "images" / "new.png"], out, key="k1") is None  # a missing slide
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / "new.png")
    assert finished_run([*slides, tmp_path / "images" / "new.png"], out, key="k1") is None  # not done yet
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(slides[1])  # other pixels under the same name
    assert finished_run(slides, out, key="k1") is None
    record_request(out / "image_0", "k2")
    assert json.loads((out / "image_0" / "summary.json").read_text())["request_key"] == "k2"


_IMPORTS = """
import sys
from nucflow.pipeline import load_segment_config, segment
from nucflow.models import default_model_path
from nucflow.slide import slide_stem
from nucflow.cli import main
from nucflow.pipeline.outputs import finished_run, request_key
print("heavy:" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def test_entry_points_import_no_heavy_module() -> None:
    """The CLI, the pipeline entry, the models' and slides' packages load torch, Ray, Dask and
    scikit-image only when a name that needs them is used (every other test uses those names)."""
    done = subprocess.run([sys.executable, "-c", _IMPORTS.format(heavy=HEAVY)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "heavy:"


def test_labelling_a_map_in_memory_loads_no_dask_zarr_or_geopandas() -> None:
    """``evaluate`` and ``validate`` label whole maps in memory: ``nucflow.postprocess`` gives
    them ``label_nuclei`` without the slide machinery's Dask, Zarr and GeoPandas."""
    code = ("import sys\nfrom nucflow.postprocess import PostprocessConfig, label_nuclei, load_stain_profile\n"
            "print('loaded:' + ','.join(m for m in ('dask', 'zarr', 'geopandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded:"
