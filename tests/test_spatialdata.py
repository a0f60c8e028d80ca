"""SpatialData export (``nucflow export --spatialdata``): the store read back by spatialdata itself
equals the slide's GeoParquet table.

spatialdata pins an older dask and pandas than the project's venv, so the extra lives in its own
venv, ``.venv-spatialdata`` (made by ``.ci/install``); the export runs there, as a user's would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from click.testing import CliRunner

from nucflow.cli import main
from nucflow.postprocess import PostprocessConfig, nuclei_table, read_rgb_from_array
from nucflow.postprocess._writers import write_geoparquet

ROOT = Path(__file__).resolve().parents[1]
SD_PYTHON = ROOT / ".venv-spatialdata" / "bin" / "python"


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """An output folder with one slide's nucleus table, made by the real post-processing."""
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[:200, :240]
    prob = np.full((200, 240), 20, np.uint8)
    for r, c in rng.uniform(10, 190, (25, 2)):
        prob[(rr - r) ** 2 + (cc - c) ** 2 <= 36] = 230
    rgb = np.where((prob > 128)[..., None], np.uint8([90, 60, 140]), np.uint8([225, 220, 230]))
    table = nuclei_table(prob, config=PostprocessConfig(), read_rgb=read_rgb_from_array(rgb), mpp=1.0)
    assert len(table) > 10
    write_geoparquet(table, tmp_path / "out" / "slide-a" / "nuclei.parquet")
    return tmp_path / "out"


def test_without_the_extra_the_error_names_the_install(finished: Path) -> None:
    pytest.importorskip("geopandas")
    try:
        import spatialdata  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("spatialdata is installed in this venv: the missing-extra message cannot show")
    result = CliRunner().invoke(main, ["export", "--spatialdata", str(finished)])
    assert result.exit_code == 1
    assert 'pip install "nucflow[spatialdata]"' in result.output
    assert not list(finished.rglob("*.zarr"))  # nothing half-written


def test_export_needs_a_format_and_a_finished_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "--spatialdata" in result.output
    result = CliRunner().invoke(main, ["export", "--spatialdata", str(tmp_path)])
    assert result.exit_code == 1 and "no <slide>/nuclei.parquet" in result.output


READ_BACK = """
import json, sys, warnings
warnings.filterwarnings("ignore")
from nucflow.cli import main
from spatialdata import read_zarr
try:
    main(["export", "--spatialdata", sys.argv[1]])
except SystemExit as exc:
    assert not exc.code, exc.code
data = read_zarr(sys.argv[1] + "/slide-a/nuclei.spatialdata.zarr")
shapes, table = data.shapes["nuclei"], data.tables["table"]
attrs = table.uns["spatialdata_attrs"]
print(json.dumps({
    "ids": shapes.index.tolist(), "wkt": [g.wkt for g in shapes.geometry],
    "var": table.var_names.tolist(), "X": table.X.tolist(), "obs_ids": table.obs["id"].tolist(),
    "region": attrs["region"], "instance_key": attrs["instance_key"],
    "systems": sorted(data.coordinate_systems),
}))
"""


def test_spatialdata_store_equals_the_geoparquet_table(finished: Path) -> None:
    if not SD_PYTHON.exists():
        pytest.skip(f"{SD_PYTHON} is missing: .ci/install makes it (pip install -e '.[spatialdata]' in its own venv)")
    done = subprocess.run([str(SD_PYTHON), "-c", READ_BACK, str(finished)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    table = gpd.read_parquet(finished / "slide-a" / "nuclei.parquet")
    assert got["ids"] == got["obs_ids"] == table["id"].tolist()
    assert got["wkt"] == [g.wkt for g in table.geometry]  # level-0 px outlines, unchanged
    assert got["region"] == "nuclei" and got["instance_key"] == "id" and got["systems"] == ["global"]
    measures = [c for c in table.columns if c not in ("id", "geometry", "geometry_um")]
    assert got["var"] == measures
    expected = table[measures].to_numpy(np.float64)
    assert np.allclose(np.array(got["X"]), expected.astype(np.float32), equal_nan=True)
