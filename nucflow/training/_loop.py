"""The per-worker Ray Train loop: data shard, DDP networks, steps, CSV log, checkpoints."""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nucflow.config import from_mapping
from nucflow.errors import TrainingError
from nucflow.training._config import TrainConfig
from nucflow.training._data import IhcImage, load_ihc, load_masks, sample_ihc, sample_masks
from nucflow.training._gan import Batch, GanNets, build_nets, current_r, train_step, unwrap

__all__ = ["LOSS_COLUMNS", "STATE_FILE", "exported_weights", "load_state", "train_loop_per_worker"]

logger = logging.getLogger("nucflow.training")
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"
LOSS_COLUMNS = ("step", "total", "cycle_ihc", "cycle_mask", "gan_s", "gan_r", "consistency",
                "pseudo", "d_s", "d_r", "r", "seconds")


def _shard(items: list[Any], rank: int, world: int) -> list[Any]:
    return items[rank::world] if len(items) >= world else items


def _load_data(cfg: dict[str, Any], config: TrainConfig, rank: int, world: int
               ) -> tuple[list[IhcImage], list[np.ndarray]]:
    rng = np.random.default_rng([config.seed, rank, 10**6])
    images = load_ihc(
        slides=[Path(p) for p in _shard(cfg["slides"], rank, world)],
        tiles=[Path(p) for p in _shard(cfg["tiles"], rank, world)],
        config=config.data if rank == 0 or world == 1 else _no_skimage(config), rng=rng,
    )
    if not images:  # a worker whose shard is empty trains on everything
        images = load_ihc(slides=[Path(p) for p in cfg["slides"]],
                          tiles=[Path(p) for p in cfg["tiles"]], config=config.data, rng=rng)
    masks = load_masks([Path(p) for p in _shard(cfg["masks"], rank, world)], config=config.data)
    return images, masks


def _no_skimage(config: TrainConfig) -> Any:
    from dataclasses import replace

    return replace(config.data, skimage_ihc=False)


def _total_steps(config: TrainConfig, images: list[IhcImage], world: int, device: Any) -> int:
    """``max_steps``, or ``epochs`` passes over all workers' tiles at ``batch_size`` each."""
    if config.max_steps is not None:
        return config.max_steps
    crop = config.data.crop
    tiles = sum(max(1, (im.rgb.shape[0] // crop) * (im.rgb.shape[1] // crop)) for im in images)
    count = torch.tensor([tiles], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
    return max(1, config.epochs * int(count.item()) // (config.data.batch_size * world))


class StepBatches(torch.utils.data.Dataset):
    """Step ``i``'s batch on CPU, as tensors: drawn from an RNG seeded by (seed, rank, step) alone,
    so a batch is the same whichever process builds it and in whatever order.

    A map-style dataset indexed by step, so :class:`torch.utils.data.DataLoader` can build the
    next batches in ``loaders`` processes while the device trains on this one.
    """

    def __init__(self, images: list[IhcImage], masks: list[np.ndarray], config: TrainConfig,
                 rank: int, world: int) -> None:
        self.images, self.masks, self.config, self.rank, self.world = images, masks, config, rank, world

    def __getitem__(self, step: int) -> tuple[torch.Tensor, ...]:
        config = self.config
        rng = np.random.default_rng([config.seed, self.rank, step])
        n = max(1, config.data.batch_size // self.world)
        d = config.data
        rgb, pseudo = sample_ihc(self.images, n=n, crop=d.crop, scale_jitter=d.scale_jitter, rng=rng,
                                 balance_groups=d.balance_sources, lowres_prob=d.lowres_prob,
                                 lowres_factor=d.lowres_factor)
        mask = sample_masks(self.masks, n=n, crop=d.crop, rng=rng)
        j = config.loss.jitter
        factors = rng.uniform(1 - j, 1 + j, size=(2, n, 3))

        def tensor(a: np.ndarray) -> torch.Tensor:  # (n, H, W[, C]) -> (n, C, H, W)
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            return (t.permute(0, 3, 1, 2) if t.ndim == 4 else t[:, None]).contiguous()

        return tensor(rgb), tensor(pseudo), tensor(mask), torch.from_numpy(factors).float()


def _to_device(tensors: tuple[torch.Tensor, ...], device: Any) -> Batch:
    x, pseudo, mask, factors = (t.to(device, non_blocking=True) for t in tensors)
    return Batch(x=x * 2 - 1, pseudo=pseudo, mask=mask, factors=factors)


def _batch(images: list[IhcImage], masks: list[np.ndarray], config: TrainConfig, step: int,
           rank: int, world: int, device: Any) -> Batch:
    """Step ``step``'s batch, built in this process."""
    return _to_device(StepBatches(images, masks, config, rank, world)[step], device)


def _batches(dataset: StepBatches, start: int, total: int, loaders: int, device: Any
             ) -> Iterator[Batch]:
    """Steps ``start`` .. ``total - 1``'s batches, built ahead in ``loaders`` processes (0: here)."""
    if loaders <= 0:
        for step in range(start, total):
            yield _to_device(dataset[step], device)
        return
    # Its own generator: the loader draws its workers' seeds from it, not from torch's global
    # one, which dropout in S and R goes on using as if no loader were there.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=range(start, total), num_workers=loaders,
        prefetch_factor=2, pin_memory=getattr(device, "type", "cpu") == "cuda",
        generator=torch.Generator())
    for tensors in loader:
        yield _to_device(tensors, device)


def _state(nets: GanNets, step: int) -> dict[str, Any]:
    state = {
        "step": step,
        **{k: unwrap(getattr(nets, k)).state_dict() for k in ("s", "r", "d_s", "d_r")},
        **{k: getattr(nets, k).state_dict() for k in ("opt_g", "opt_ds", "opt_dr")},
    }
    if nets.s_ema is not None:
        state["s_ema"] = nets.s_ema.module.state_dict()
        state["s_ema_n"] = int(nets.s_ema.n_averaged)
    return state


def exported_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The S weights a checkpoint's state exports: the moving average when the run kept one."""
    return dict(state["s_ema"] if "s_ema" in state else state["s"])


def load_state(path: Path, nets: GanNets | None = None) -> dict[str, Any]:
    """Read a checkpoint's state (safe ``weights_only`` load) and restore it into ``nets``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if nets is not None:
        for key in ("s", "r", "d_s", "d_r"):
            unwrap(getattr(nets, key)).load_state_dict(state[key])
        for key in ("opt_g", "opt_ds", "opt_dr"):
            getattr(nets, key).load_state_dict(state[key])
        if nets.s_ema is not None:
            if "s_ema" not in state:
                raise TrainingError(f"{path} has no moving average of S (optim.ema): it was "
                                    "written by a run without one; resume it with optim.ema 0")
            nets.s_ema.module.load_state_dict(state["s_ema"])
            nets.s_ema.n_averaged.fill_(state["s_ema_n"])
    return state


class _Log:
    """Rank 0's per-step CSV (truncated to the resumed step) and compact progress line."""

    def __init__(self, path: Path, start: int, total: int, every: int) -> None:
        self.path, self.start, self.total, self.every = path, start, total, every
        rows = []
        if start > 0 and path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < start]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOSS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.t0 = time.perf_counter()

    def write(self, step: int, losses: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, LOSS_COLUMNS, restval="").writerow(
                {k: v for k, v in losses.items() if k in LOSS_COLUMNS} | {"step": step})
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            done = step + 1 - self.start
            rate = (time.perf_counter() - self.t0) / max(1, done)
            terms = " ".join(f"{k} {v:.3f}" for k, v in losses.items()
                             if k not in ("r", "seconds"))
            logger.info("step %d/%d | %s | %.2f s/step, eta %.0f min", step + 1, self.total,
                        terms, rate, rate * (self.total - step - 1) / 60)


def _checksums(nets: GanNets) -> dict[str, float]:
    """Sum of every parameter of each network: equal on every rank when DDP keeps them in sync."""
    return {k: float(sum(p.double().sum() for p in getattr(nets, k).parameters()))
            for k in ("s", "r", "d_s", "d_r")}


def _report(nets: GanNets, step: int, window: list[dict[str, float]], rank: int) -> None:
    """Every rank writes its parameter checksums; rank 0 also the state and mean losses."""
    import ray.train

    keys = sorted({k for row in window for k in row})
    metrics = {"step": step} | {k: float(np.mean([r[k] for r in window if k in r])) for k in keys}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"rank_{rank}.json").write_text(json.dumps(_checksums(nets)))
        if rank == 0:
            torch.save(_state(nets, step), Path(tmp) / STATE_FILE)
            (Path(tmp) / METRICS_FILE).write_text(json.dumps(metrics))
        checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:08d}")


def _resume(nets: GanNets, cfg: dict[str, Any]) -> int:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and cfg.get("resume_from"):
        checkpoint = ray.train.Checkpoint(cfg["resume_from"])
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        state = load_state(Path(folder) / STATE_FILE, nets)
    logger.info("resumed from %s at step %d", checkpoint.path, state["step"])
    return int(state["step"])


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    """Ray Train entry point; ``cfg`` holds the config as a dict and the data paths."""
    import ray.train
    import ray.train.torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = from_mapping(TrainConfig, cfg["config"], source="train_loop_config")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config.seed)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # every batch has the same shape: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    images, masks = _load_data(cfg, config, rank, world)
    nets = build_nets(config, wrap=ray.train.torch.prepare_model)
    start = _resume(nets, cfg)
    total = _total_steps(config, images, world, device)
    log = _Log(Path(cfg["csv"]), start, total, config.log_every) if rank == 0 else None
    window: list[dict[str, float]] = []
    batches = _batches(StepBatches(images, masks, config, rank, world), start, total,
                       int(cfg.get("loaders") or 0), device)
    t0 = time.perf_counter()
    for step, batch in enumerate(batches, start):  # "seconds": waiting for the batch and the step
        losses = train_step(nets, batch, step=step, config=config, device_type=device.type)
        losses |= {"r": current_r(config, step), "seconds": time.perf_counter() - t0}
        window.append(losses)
        if log is not None:
            log.write(step, losses)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == total:
            _report(nets, step + 1, window, rank)
            window = []
        t0 = time.perf_counter()
