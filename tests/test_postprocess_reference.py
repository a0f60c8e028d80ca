"""The fast post-processing gives the same labels and table as the implementation it replaced.

``benchmarks/postprocess_reference.py`` keeps that implementation (one watershed call over
every component with several markers, ``relabel_sequential``, stain means over every labelled
pixel, outlines traced from one strip); here both run on probability maps the bundled model
predicts on real Ki67 pixels, with each shipped stain profile, grown labels and hole filling.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import postprocess_reference as reference  # noqa: E402
from nucflow.postprocess import (  # noqa: E402
    MapGeometry,
    label_nuclei,
    load_stain_profile,
    nuclei_table,
    read_rgb_from_array,
)
from nucflow.postprocess._blocked import blocks  # noqa: E402

MPP = 0.25  # the bundled model's working resolution


@pytest.fixture(scope="module")
def real_map(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The bundled model's uint8 map of a 768 px crop of a real Ki67 region, and its RGB."""
    from skimage.io import imread

    from nucflow.inference.tiled import predict_image
    from nucflow.models import default_model_path, load_model

    rgb = np.ascontiguousarray(imread(shared_data / "ihc" / "regions" / "ROI_7.png")[:768, :768, :3])
    prob = predict_image(rgb, load_model(default_model_path()))
    return np.rint(prob * 255).astype(np.uint8), rgb


PROFILES = {
    "ki67": load_stain_profile("ki67"),
    "her2": load_stain_profile("her2"),  # per-nucleus erosion
    "grown": replace(load_stain_profile("ki67"), expand_um=0.5),
    "filled": replace(load_stain_profile("ki67"), fill_holes=True, min_distance_um=2.0),
    "shallow": replace(load_stain_profile("ki67"), min_dynamic_um=0.5),  # h-maxima markers
}


@pytest.mark.parametrize("name", list(PROFILES))
def test_labels_equal_the_reference_on_a_real_map(real_map, name: str) -> None:
    prob, _ = real_map
    expected = reference.label_nuclei(prob, mpp=MPP, config=PROFILES[name])
    assert expected.max() > 50  # enough nuclei, many of them touching, to split
    np.testing.assert_array_equal(label_nuclei(prob, mpp=MPP, config=PROFILES[name]), expected)


def test_blocked_table_equals_the_reference_blocks_on_a_real_map(real_map) -> None:
    # Every column and outline of every block, bit for bit, with RGB (stain means) read.
    prob, rgb = real_map
    config, block_size = PROFILES["ki67"], 256
    geometry = MapGeometry(mpp=MPP, level0_offset=(7.0, 3.0), level0_scale=2.0, slide_mpp=0.125)
    reader = read_rgb_from_array(rgb)
    table = nuclei_table(prob, config=config, read_rgb=reader, mpp=MPP, level0_offset=(7.0, 3.0),
                         level0_scale=2.0, slide_mpp=0.125, block_size=block_size, scheduler="sync")
    parts = []
    for block in blocks(prob.shape, block_size=block_size, halo=config.in_pixels(MPP).halo):
        r0, r1, c0, c1 = block.region
        part = reference.block_table(prob[r0:r1, c0:c1], block=block, read_rgb=reader, geometry=geometry,
                                     config=config)
        if part is not None:
            parts.append(part)
    outlines = [outline for part in parts for outline in part[1]]
    assert len(table) == len(outlines) > 50
    for column in parts[0][0]:
        expected = np.concatenate([part[0][column] for part in parts])
        np.testing.assert_array_equal(table[column].to_numpy(), expected, err_msg=column)
    assert all(shapely.equals_exact(a, b, tolerance=0) for a, b in zip(table.geometry, outlines, strict=True))
