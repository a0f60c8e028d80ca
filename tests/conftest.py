"""Shared fixtures: the real data in ../shared/data, synthetic slides, and Ray settings."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Ray 2.60 on one machine: no token auth file, no usage stats, a private temp dir.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="nucflow-ray-"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder beside the project (never copied into it)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; tests need ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo slide: scikit-image's IHC image mirrored to 1024x1024, 0.25 µm/px, pyramidal SVS."""
    from nucflow.slide.synthetic import write_demo_slide

    return write_demo_slide(tmp_path_factory.mktemp("slides") / "demo.svs")


@pytest.fixture(scope="session")
def small_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 768x640 synthetic SVS: tissue-coloured blobs on white, 0.5 µm/px, two levels."""
    from nucflow.slide.synthetic import write_svs

    rng = np.random.default_rng(0)
    rows, cols = 640, 768
    rgb = np.full((rows, cols, 3), 242, np.uint8)
    rgb[100:540, 120:650] = (200, 170, 190)
    rr, cc = np.mgrid[:rows, :cols]
    for r, c in rng.integers((110, 130), (530, 640), size=(60, 2)):
        blob = (rr - r) ** 2 + (cc - c) ** 2 < 36
        rgb[blob] = (80, 60, 120)
    return write_svs(tmp_path_factory.mktemp("slides") / "small.svs", rgb, mpp=0.5, min_level_size=256)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs, no dashboard), shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real UNet weights of a freshly initialised small network (depth 4, ngf 4), r = 1, at 0.5 µm/px."""
    import torch

    from nucflow.models import ModelCard, build_unet, save_model

    card = ModelCard(ngf=4, depth=4, norm="batch", dropout=0.0, r=1.0, mpp=0.5, tile_size=128)
    torch.manual_seed(0)
    unet = build_unet(card)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(path, unet, card)
    return path


def _bundled_member() -> tuple[Any, dict[str, Any]]:
    """The bundled model's card and weights as one network: itself, or its first member when it
    is an ensemble (card ``members`` 1, the member's weights without their ``0.`` prefix)."""
    from dataclasses import replace

    from nucflow.models import default_model_path, load_model

    loaded = load_model(default_model_path())
    if loaded.card.members == 1:
        return replace(loaded.card, model_id=""), dict(loaded.state_dict)
    state = {k.removeprefix("0."): v for k, v in loaded.state_dict.items() if k.startswith("0.")}
    return replace(loaded.card, members=1, model_id=""), state


@pytest.fixture(scope="session")
def bundled_member_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`_bundled_member` saved as a model file: a real trained network at a third of the
    bundled ensemble's cost, for tests that need trained weights but not the ensemble."""
    from nucflow.models import build_unet, save_model

    card, state = _bundled_member()
    unet = build_unet(card)
    unet.load_state_dict(state)
    path = tmp_path_factory.mktemp("member") / "model.safetensors"
    save_model(path, unet, card)
    return path


@pytest.fixture(scope="session")
def bundled_member() -> Callable[[], tuple[Any, dict[str, Any]]]:
    """:func:`_bundled_member`: a fresh copy of the card and weights at each call."""
    return _bundled_member


def _kill_mid_run(proc: subprocess.Popen[bytes], done_path: str, at_least: int = 20) -> int:
    """SIGKILL a ``nucflow segment`` run started in its own session (the driver and the Ray it
    started) once its map's ``done`` grid (a path or URI zarr opens) records ``at_least`` tiles;
    returns how many it had. The poll is bounded but generous: a loaded machine starts Ray slowly."""
    import zarr

    done, deadline = 0, time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                done = int(np.asarray(zarr.open_array(done_path, mode="r")[:]).sum())
            except Exception:  # not created yet, or being written
                continue
            if done >= at_least:
                break
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return done


@pytest.fixture
def kill_mid_run() -> Callable[..., int]:
    """:func:`_kill_mid_run`: the kill-and-resume tests (local outputs, outputs in a bucket) share it."""
    return _kill_mid_run
