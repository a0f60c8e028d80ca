"""200 steps of the CPU configuration on real data lower the cycle losses (slow)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nucflow.training import load_ihc, load_masks, load_train_config
from nucflow.training._data import find_images
from nucflow.training._gan import build_nets, train_step
from nucflow.training._loop import _batch


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cpu_config_lowers_the_cycle_loss(shared_data) -> None:
    config = load_train_config("cpu")
    config = dataclasses.replace(config, loss=dataclasses.replace(config.loss, pseudo=0.0))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    # real unlabelled IHC only: validation tiles (DeepLIIF, glioma, EndoNuke) are never trained on
    tiles = find_images([shared_data / "ihc/regions", f"{shared_data / 'ihc/unlabelled/mist_ki67_demo'}@0.55"],
                        what="tile")
    images = load_ihc(slides=[], tiles=tiles, config=config.data, rng=rng)
    masks = load_masks(find_images([shared_data / "masks/consep"], what="mask"),
                       config=config.data)
    nets = build_nets(config)
    cycles = []
    for step in range(200):
        losses = train_step(nets, _batch(images, masks, config, step, 0, 1, torch.device("cpu")),
                            step=step, config=config)
        cycles.append(losses["cycle_ihc"] + losses["cycle_mask"])
    first, last = np.mean(cycles[:20]), np.mean(cycles[-20:])
    assert last < 0.8 * first, (first, last)
