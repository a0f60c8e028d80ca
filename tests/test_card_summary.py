"""Model cards hold no machine paths: a data summary (names, counts, hashes) and path-free records."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nucflow.models import ModelCard, build_unet, default_model_path, load_model, save_model
from nucflow.models._card import data_summary

ABSOLUTE = re.compile(r"(?<![^\s'\"=])(?:~|\.{1,2}/|/)[^\s'\"]*")


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_bundled_card_has_no_machine_path_and_its_weights_are_unchanged() -> None:
    path = default_model_path()
    assert path is not None
    loaded = load_model(path)
    assert loaded.card.model_id == "474e374e9b78f78c" and loaded.card.members == 3
    card = json.loads(Path(path).with_suffix(".json").read_text())
    assert [s for s in _strings(card) if ABSOLUTE.search(s)] == []
    members = card["training"]["ensemble"]
    assert [m["training"]["config"]["seed"] for m in members] == [0, 1, 2]
    for member in members:
        masks = member["training"]["data"]["masks"]
        assert masks["count"] == 659 and len(masks["names_sha256"]) == 64 and "names" not in masks


def test_save_model_strips_paths_and_summarises_data(tmp_path: Path) -> None:
    card = ModelCard(ngf=4, depth=3, norm="none", dropout=0.0, dropout_blocks=0, mpp=0.5, tile_size=64, training={
        "command": "nucflow train --config /home/me/cpu.yaml --tiles ../data/regions -o /scratch/run1",
        "checkpoint": "/scratch/run1/checkpoints/step_00000010",
        "data": data_summary({"tiles": ["/data/a.png", "/data/b.png"]}),
        "note": "trained at 0.5 µm/px",
    })
    written = save_model(tmp_path / "m.safetensors", build_unet(card), card)
    training = load_model(tmp_path / "m.safetensors").card.training
    assert training == written.training
    assert training["command"] == "nucflow train --config cpu.yaml --tiles regions -o run1"
    assert training["checkpoint"] == "step_00000010" and training["note"] == "trained at 0.5 µm/px"
    assert training["data"]["tiles"]["count"] == 2 and training["data"]["tiles"]["names"] == ["a.png", "b.png"]
