"""Choosing the post-processing device, and the GPU path's steps run with NumPy stand-ins.

No GPU or CuPy here: the CuPy path itself is not run. What is tested is the choice
(``auto`` / ``cpu`` / ``gpu``) and that the GPU path's own formulas (SciPy's float distance
transform squared and rounded, the transfers to and from the device) give the CPU labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from nucflow.errors import ConfigError
from nucflow.pipeline.config import load_segment_config
from nucflow.postprocess import PostprocessConfig, _device, _label, label_nuclei, nuclei_table
from nucflow.postprocess._device import ArrayBackend, resolve_device


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_device, "gpu_available", lambda: False)


@pytest.fixture
def a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_device, "gpu_available", lambda: True)


def test_cupy_is_not_installed_here_so_auto_is_the_cpu() -> None:
    # The real probe, on a CPU machine: CuPy absent (an optional extra), so no GPU.
    import importlib.util

    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    assert not _device.gpu_available()
    assert resolve_device("auto") == "cpu"


def test_auto_picks_the_gpu_when_one_is_seen_and_cpu_is_always_the_cpu(a_gpu) -> None:
    assert resolve_device("auto") == "gpu"
    assert resolve_device("gpu") == "gpu"
    assert resolve_device("cpu") == "cpu"


def test_gpu_asked_for_without_one_is_a_config_error_naming_the_fix(no_gpu) -> None:
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match=r"nucflow\[gpu\]"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="postprocess_device must be one of auto, cpu, gpu"):
        resolve_device("cuda")


def test_segment_config_carries_the_setting_and_checks_it(tmp_path) -> None:
    assert load_segment_config().postprocess_device == "auto"
    path = tmp_path / "segment.yaml"
    path.write_text("postprocess_device: tpu\n")
    with pytest.raises(ConfigError, match="postprocess_device"):
        load_segment_config(path)


class _StandIn(ArrayBackend):
    """The GPU backend's code with NumPy and SciPy standing in for CuPy and cupyx (same API)."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.device = "gpu"  # squared_distance takes the GPU formula
        self.transfers = 0

    def asarray(self, array: np.ndarray) -> np.ndarray:
        self.transfers += 1
        return np.array(array, copy=True)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        self.transfers += 1
        return np.array(array, copy=True)


def _cells(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:160, :200]
    prob = np.zeros((160, 200))
    for r, c, radius in zip(rng.uniform(0, 160, 60), rng.uniform(0, 200, 60), rng.uniform(4, 9, 60), strict=True):
        prob = np.maximum(prob, np.clip(1.2 - np.hypot(rr - r, cc - c) / radius, 0, 1))
    return np.rint(prob * 255).astype(np.uint8)


@pytest.mark.parametrize("fill_holes", [False, True])
def test_the_gpu_path_with_numpy_stand_ins_gives_the_cpu_labels(monkeypatch: pytest.MonkeyPatch, fill_holes: bool):
    config = PostprocessConfig(fill_holes=fill_holes, min_distance_um=2.0)
    stand_in = _StandIn()
    squared = stand_in.squared_distance(_cells(0) > 127)
    # The GPU formula (float distance, squared and rounded) is the CPU's exact squared distance.
    np.testing.assert_array_equal(squared, _device.backend("cpu").squared_distance(_cells(0) > 127))
    assert squared.max() > 20 and np.array_equal(squared > 0, _cells(0) > 127)
    expected = label_nuclei(_cells(0), mpp=1.0, config=config)
    monkeypatch.setattr(_label, "backend", lambda device: stand_in if device == "gpu" else ArrayBackend("cpu"))
    got = label_nuclei(_cells(0), mpp=1.0, config=config, device="gpu")
    assert expected.max() > 20 and stand_in.transfers >= 4  # the map up, mask, distances and maxima down
    np.testing.assert_array_equal(got, expected)


def test_nuclei_table_asked_for_a_gpu_without_one_fails_before_any_block(no_gpu) -> None:
    with pytest.raises(ConfigError, match="postprocess_device is 'gpu'"):
        nuclei_table(_cells(1), config=PostprocessConfig(), mpp=1.0, device="gpu")
