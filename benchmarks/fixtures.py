"""What the benchmarks run on: a slide made of real IHC pixels and a CPU-size model.

The slide mirrors the DeepLIIF Ki67 regions (40x, downscaled to 0.5 µm/px) into a square
tissue field with a white border, written as a pyramidal Aperio SVS. The model is the
default model when one ships, else a UNet of the shape ``nucflow/configs/train/cpu.yaml`` trains,
given a short supervised warm start on label-free Otsu pseudo-masks so that its maps hold
nucleus-like objects (post-processing cost depends on them; a random network finds none).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import yaml

from nucflow.config import CONFIG_DIR

__all__ = ["BenchSlide", "bench_slide", "benchmark_model", "real_ihc_field", "tile_folder"]

REGIONS = ("ROI_1.png", "ROI_7.png", "ROI_127.png")
SOURCE_MPP = 0.25  # the DeepLIIF regions are 40x
BORDER = 256  # px of white glass around the tissue field


@dataclass(frozen=True)
class BenchSlide:
    path: Path
    rows: int
    cols: int
    mpp: float


def real_ihc_field(data_dir: Path, *, rows: int, cols: int, mpp: float = 0.5) -> np.ndarray:
    """The DeepLIIF Ki67 regions side by side at ``mpp``, mirrored to (rows, cols, 3) uint8.

    Equal to ``np.pad(block, ..., mode="symmetric")[:rows, :cols]`` of the regions' block, so
    the field of a smaller (rows, cols) is the top-left corner of a larger one.
    """
    field = np.empty((rows, cols, 3), np.uint8)
    _mirror_into(field, _ihc_block(data_dir, mpp=mpp))
    return field


def _ihc_block(data_dir: Path, *, mpp: float) -> np.ndarray:
    """The three regions rescaled to ``mpp``, cropped to one height and side by side, uint8 RGB."""
    from skimage import io
    from skimage.transform import rescale

    scale = SOURCE_MPP / mpp
    parts = []
    for name in REGIONS:
        rgb = io.imread(data_dir / "ihc" / "regions" / name)[..., :3]
        parts.append((rescale(rgb, scale, channel_axis=2, anti_aliasing=True) * 255).round().astype(np.uint8))
    height = min(p.shape[0] for p in parts)
    return np.concatenate([p[:height] for p in parts], axis=1)


def _mirror_into(out: np.ndarray, block: np.ndarray) -> None:
    """Fill ``out`` (rows, cols, ...) in place with ``block`` and its mirror images, alternating.

    The symmetric padding of ``block`` at its bottom and right, written straight into ``out``
    (no padded copy: a 4x benchmark slide is about a gigabyte).
    """
    block_rows, block_cols = block.shape[:2]
    for i, row in enumerate(range(0, out.shape[0], block_rows)):
        for j, col in enumerate(range(0, out.shape[1], block_cols)):
            part = block[:: -1 if i % 2 else 1, :: -1 if j % 2 else 1]
            out[row : row + block_rows, col : col + block_cols] = part[: out.shape[0] - row, : out.shape[1] - col]


def tile_folder(folder: Path, data_dir: Path, *, rows: int, cols: int, side: int = 512, mpp: float = 0.5) -> list[Path]:
    """The real IHC field of (rows x side, cols x side) px cut into ``side`` px PNG tiles (cached).

    The same pixels as :func:`bench_slide`'s field of that size, so a folder of tiles and one
    slide of the same area can be compared. PNG carries no resolution: pass ``mpp``.
    """
    paths = [folder / f"tile_{r:03d}_{c:03d}.png" for r in range(rows) for c in range(cols)]
    if all(p.is_file() for p in paths):
        return paths
    from skimage.io import imsave

    folder.mkdir(parents=True, exist_ok=True)
    field = real_ihc_field(data_dir, rows=rows * side, cols=cols * side, mpp=mpp)
    for path in paths:
        r, c = (int(x) for x in path.stem.split("_")[1:])
        imsave(path, field[r * side : (r + 1) * side, c * side : (c + 1) * side], check_contrast=False)
    return paths


def bench_slide(path: Path, data_dir: Path, *, rows: int, cols: int, mpp: float = 0.5, tile: int = 256) -> BenchSlide:
    """The real IHC field of (rows, cols) inside a white border, as a pyramidal SVS (cached).

    The field is written straight into the bordered level-0 array, the one full-size copy;
    levels are made by 2x2 averaging in uint16 (:func:`_half`), so writing costs about 1.5x
    the slide's own size (a 16896 px square: about 1.3 GB). Reused when ``path`` exists.
    """
    full_rows, full_cols = rows + 2 * BORDER, cols + 2 * BORDER
    if not path.is_file():
        level = np.full((full_rows, full_cols, 3), 255, np.uint8)
        _mirror_into(level[BORDER : full_rows - BORDER, BORDER : full_cols - BORDER], _ihc_block(data_dir, mpp=mpp))
        _write_pyramid(path, level, mpp=mpp, tile=tile)
    return BenchSlide(path, full_rows, full_cols, mpp)


def _write_pyramid(path: Path, level: np.ndarray, *, mpp: float, tile: int) -> None:
    rows, cols = level.shape[:2]
    description = (
        f"Aperio Image Library v12.0.0\r\n{cols}x{rows} [0,0 {cols}x{rows}] ({tile}x{tile}) "
        f"JPEG Q=90|AppMag = 20|MPP = {mpp}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with tifffile.TiffWriter(tmp) as tif:
        first = True
        while True:
            tif.write(
                level, tile=(tile, tile), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                description=description if first else None, metadata=None, subfiletype=0 if first else 1,
            )
            first = False
            if max(level.shape[:2]) // 2 < 512:
                break
            level = _half(level)
    tmp.replace(path)


def _half(level: np.ndarray) -> np.ndarray:
    rows, cols = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
    a = level[:rows:2, :cols:2].astype(np.uint16)
    a += level[1:rows:2, :cols:2]
    a += level[:rows:2, 1:cols:2]
    a += level[1:rows:2, 1:cols:2]
    return ((a + 2) // 4).astype(np.uint8)


def _cpu_card_fields() -> dict:
    """The network shape of ``nucflow/configs/train/cpu.yaml`` (the small CPU model)."""
    config = yaml.safe_load((CONFIG_DIR / "train" / "cpu.yaml").read_text())
    net = config.get("network", {})
    keys = ("ngf", "depth", "norm", "dropout", "dropout_blocks", "max_mult")
    fields = {k: net[k] for k in keys if k in net}
    fields["r"] = float(config.get("loss", {}).get("r", 60.0))
    fields["mpp"] = float(config.get("data", {}).get("mpp", 0.5))
    return fields


def benchmark_model(
    cache: Path, rgb: np.ndarray, *, steps: int, seed: int = 0, model: Path | None = None
) -> tuple[Path, dict]:
    """``model`` when given, else the default model if one ships, else a warm-started CPU-size
    UNet (cached in ``cache``).

    Returns the model path and a description for the report.
    """
    from nucflow.models import default_model_path

    if model is not None:  # run.py loads it next, before any timing: a bad path fails there, named
        return Path(model), {"source": "--model", "path": str(model)}
    default = default_model_path()
    if default is not None:
        return default, {"source": "bundled default model", "path": str(default)}
    fields = _cpu_card_fields()
    key = hashlib.sha256(json.dumps([fields, steps, seed, rgb.shape], sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"model-{key}"
    if not (path / "model.safetensors").is_file():
        _warm_start(path, rgb, fields=fields, steps=steps, seed=seed)
    about = {
        "source": f"UNet shaped like nucflow/configs/train/cpu.yaml, {steps} supervised steps on Otsu pseudo-masks "
        "(no trained model ships yet)",
        **fields,
    }
    return path / "model.safetensors", about


def _warm_start(path: Path, rgb: np.ndarray, *, fields: dict, steps: int, seed: int) -> None:
    import torch

    from nucflow.inference.baselines import baseline_probability
    from nucflow.models import ModelCard, build_unet, save_model

    card = ModelCard(**fields, tile_size=128)
    torch.manual_seed(seed)
    unet = build_unet(card).train()
    rng = np.random.default_rng(seed)
    field = rgb[: min(rgb.shape[0], 1024), : min(rgb.shape[1], 1024)]
    target = baseline_probability(field, method="threshold", sigma=1.0)
    optimiser = torch.optim.Adam(unet.parameters(), lr=2e-3)
    for _ in range(steps):
        x, y = _crops(field, target, rng, n=4, side=128)
        logits = card.r * unet(x * 2.0 - 1.0)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    save_model(path, unet.eval(), card)


def _crops(rgb: np.ndarray, target: np.ndarray, rng: np.random.Generator, *, n: int, side: int) -> tuple:
    import torch

    rows = rng.integers(0, rgb.shape[0] - side + 1, n)
    cols = rng.integers(0, rgb.shape[1] - side + 1, n)
    x = np.stack([rgb[r : r + side, c : c + side] for r, c in zip(rows, cols, strict=True)])
    y = np.stack([target[r : r + side, c : c + side] for r, c in zip(rows, cols, strict=True)])
    return (
        torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255.0),
        torch.from_numpy(y[:, None].astype(np.float32)),
    )
