"""The probability map's metadata has one owner (inference/store.py's MapMetadata): written by
create_map, read back by ProbabilityMap.metadata and by post-processing, with one set of defaults."""

from __future__ import annotations

from pathlib import Path

import zarr

from nucflow.inference.store import MapMetadata, create_map, open_map
from nucflow.postprocess._blocked import map_geometry


def test_metadata_round_trips_and_old_maps_get_the_defaults(tmp_path: Path) -> None:
    meta = MapMetadata(mpp=0.5, slide_mpp=0.25, level0_scale=2.0, slide_bounds=(96, 40, 800, 600),
                       qupath_offset=(96, 40), slide_path="/s.svs", slide_identity={"size": 3}, model_id="m",
                       map_hash="h", tile_size=128, tile_core=64, tile_margin=32, nucflow_version="0.1.0")
    create_map(tmp_path / "p.zarr", shape=(100, 90), core=64, attrs=meta)
    stored = open_map(tmp_path / "p.zarr")
    assert stored is not None and stored.metadata == meta
    attrs = zarr.open_group(str(tmp_path / "p.zarr"), mode="r").attrs.asdict()
    assert attrs["qupath_offset"] == [96, 40] and "ome" in attrs  # JSON lists; the OME block beside it
    geometry = map_geometry(attrs)
    assert (geometry.mpp, geometry.slide_mpp, geometry.level0_scale, geometry.level0_offset) == (0.5, 0.25, 2.0,
                                                                                                  (0.0, 0.0))
    old = MapMetadata.from_attrs({"mpp": 0.5, "model_id": "m"})  # an earlier version's map
    assert (old.slide_mpp, old.level0_scale, old.level0_offset, old.slide_identity) == (None, 1.0, (0.0, 0.0), {})


def test_done_recorder_batches_and_records_the_inference_time_first(tmp_path: Path) -> None:
    from nucflow.inference.store import DoneRecorder
    from nucflow.slide import tile_grid

    grid = tile_grid((256, 256), tile_size=128, margin=32)
    store = create_map(tmp_path / "p.zarr", shape=grid.shape, core=grid.core, attrs=MapMetadata(mpp=0.5))
    recorder = DoneRecorder({"s": (store.path, grid.tiles)}, every_s=3600)
    recorder.add("s", [0, 1])
    assert not recorder.due() and store.done_chunks() == set()  # batched: nothing written yet
    recorder.flush()
    assert store.done_chunks() == {grid.tiles[0].chunk, grid.tiles[1].chunk}
    recorder.add("s", range(2, len(grid.tiles)))
    recorder.finished("s", 12.5)
    assert store.metadata.inference_s == 12.5
    assert store.done_chunks() == {t.chunk for t in grid.tiles}
