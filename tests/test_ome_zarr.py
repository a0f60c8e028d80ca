"""The probability map as an OME-Zarr image (NGFF 0.5): multiscales metadata and a pyramid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from nucflow.inference.store import ProbabilityMap, create_map, open_map


def _halved(image: np.ndarray) -> np.ndarray:
    """The plain in-memory 2x2 mean (edges repeated for odd sizes), rounded half up."""
    rows, cols = image.shape
    padded = np.pad(image, ((0, rows % 2), (0, cols % 2)), mode="edge").astype(np.uint16)
    sums = padded[0::2, 0::2] + padded[1::2, 0::2] + padded[0::2, 1::2] + padded[1::2, 1::2]
    return ((sums + 2) // 4).astype(np.uint8)


def test_pyramid_levels_equal_the_in_memory_means_and_the_ome_reader_sees_them(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    rng = np.random.default_rng(1)
    full = rng.integers(0, 256, (1300, 1101), dtype=np.uint8)
    full[:400, :400] = 0  # empty chunks stay unwritten at every level
    path = tmp_path / "probability.zarr"
    store = create_map(path, shape=full.shape, core=128, attrs={"mpp": 0.25, "model_id": "m"})
    store.array(mode="r+")[:] = full
    paths = store.write_pyramid(min_side=300)
    assert paths == ["probability", "probability_2x", "probability_4x", "probability_8x"]
    expected = full
    for name in paths[1:]:
        expected = _halved(expected)
        assert np.array_equal(np.asarray(zarr.open_array(f"{path}/{name}", mode="r")[:]), expected)
    nodes = list(Reader(parse_url(str(path)))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert [tuple(d.shape) for d in image.data] == [(1300, 1101), (650, 551), (325, 276), (163, 138)]
    transforms = image.metadata["coordinateTransformations"]
    assert [t[0]["scale"] for t in transforms] == [[0.25, 0.25], [0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]
    assert transforms[1][1] == {"type": "translation", "translation": [0.125, 0.125]}
    assert [a["unit"] for a in image.metadata["axes"]] == ["micrometer", "micrometer"]
    # nucflow's own attributes and reading stay as they were
    reopened = open_map(path)
    assert reopened is not None and reopened.attrs["model_id"] == "m" and reopened.attrs["mpp"] == 0.25
    assert np.array_equal(np.asarray(ProbabilityMap(str(path)).array()[:]), full)
    # written again (a resumed finish): the same levels, nothing stale left
    assert store.write_pyramid(min_side=700) == ["probability", "probability_2x"]
    assert sorted(zarr.open_group(str(path), mode="r").array_keys()) == ["done", "probability", "probability_2x"]
