"""``train()``: the Ray Train job that trains S, R, D_S, D_R and exports the chosen S."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucflow import __version__
from nucflow.atomic import write_json
from nucflow.cluster import check_shared_path, load_cluster_config, ray_session
from nucflow.config import to_dict
from nucflow.errors import TrainingError
from nucflow.models import ModelCard
from nucflow.models._card import data_summary
from nucflow.training._config import TrainConfig, load_train_config
from nucflow.training._data import find_images
from nucflow.training._export import (
    export_checkpoint,
    plot_losses,
    select_checkpoint,
)
from nucflow.training._loop import STATE_FILE, exported_weights, load_state, train_loop_per_worker

__all__ = ["RUN_NAME", "TrainResult", "batch_loaders", "export_run", "loop_config", "train", "training_record"]

logger = logging.getLogger(__name__)
RUN_NAME = "nucflow-train"


@dataclass(frozen=True)
class TrainResult:
    """What a run left in its output folder."""

    model_path: Path
    card: ModelCard
    checkpoint: str
    csv: Path
    curves: Path
    candidates: tuple[dict[str, float], ...]


def _mask_files(paths: Sequence[str | Path]) -> list[Path]:
    files = find_images(paths, what="mask")
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.npy"))
    return files


def _data_lists(slides: Sequence[str | Path], tiles: Sequence[str | Path],
                masks: Sequence[str | Path], config: TrainConfig) -> dict[str, list[str]]:
    data = {
        "slides": [str(Path(p).resolve()) for p in find_images(slides, what="slide")],
        "tiles": [str(p.resolve()) for p in find_images(tiles, what="tile")],
        "masks": [str(p.resolve()) for p in _mask_files(masks)],
    }
    if not (data["slides"] or data["tiles"] or config.data.skimage_ihc):
        raise TrainingError("no IHC training images: give --slides and/or --tiles with images")
    if not data["masks"]:
        raise TrainingError(f"no masks found in {list(map(str, masks))}: give --masks with "
                            "PNG/TIFF instance or binary masks or a PanNuke masks.npy")
    return data


def _with_teacher_path(config: TrainConfig) -> TrainConfig:
    """``config`` with ``data.pseudo_model`` as an absolute path, checked before any worker
    starts (Ray Train workers run in another folder, so a relative path would not reach them)."""
    model = config.data.pseudo_model
    if model in ("", "default"):
        return config
    path = Path(model).expanduser().resolve()
    if not path.is_file():
        raise TrainingError(f"data.pseudo_model {model} does not exist: give a model file written "
                            "by nucflow train, or 'default' for the bundled model")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, pseudo_model=str(path)))


def _latest_local_checkpoint(storage: str) -> str | None:
    run = Path(storage) / RUN_NAME
    found = sorted(run.glob(f"step_*/{STATE_FILE}")) if run.is_dir() else []
    return str(found[-1].parent) if found else None


def _storage(out: Path, storage: str | None, resume: bool) -> tuple[str, str | None]:
    storage = storage or str(out.resolve() / "checkpoints")
    latest = None if "://" in storage else _latest_local_checkpoint(storage)
    if latest and not resume:
        raise TrainingError(
            f"{storage} already holds checkpoints of a run; pass --resume to continue it "
            "or choose a new output folder"
        )
    if resume and latest is None and "://" not in storage:
        raise TrainingError(f"--resume: no checkpoint found under {storage}/{RUN_NAME}")
    return storage, latest


def batch_loaders(gpus_per_worker: float, cpus_per_worker: float) -> int:
    """Processes that build a worker's next batches while it trains on this one.

    A CPU worker spends its CPU slots as torch threads and builds its batches itself (0). A
    GPU worker's process drives the GPU, and its other slots build batches: at paper scale
    (30 crops of 256 px) one process builds a batch in longer than an H200 trains on it.
    """
    return max(0, int(cpus_per_worker) - 1) if gpus_per_worker > 0 else 0


def loop_config(data: dict[str, list[str]], config: TrainConfig, out: Path, *, threads: int | None,
                resume_from: str | None, loaders: int = 0) -> dict[str, Any]:
    """The argument of :func:`train_loop_per_worker`: the data lists, the configuration as a
    dict, rank 0's ``losses.csv`` in ``out``, CPU threads (None: torch's default), the
    checkpoint folder to resume from and the :func:`batch_loaders` processes."""
    return data | {"config": to_dict(config), "csv": str(out.resolve() / "losses.csv"),
                   "threads": threads, "resume_from": resume_from, "loaders": loaders}


def training_record(command: str, config: TrainConfig, workers: int,
                    data: dict[str, list[str]]) -> dict[str, Any]:
    """What the model card records of how it was trained (paths cut by the card)."""
    return {"command": command, "config": to_dict(config), "workers": workers,
            "data": data_summary(data), "software": f"nucflow {__version__}"}


def _fit(loop_config: dict[str, Any], *, workers: int, gpus: float, cpus: float,
         storage: str) -> Any:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus > 0 else {})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=RUN_NAME, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors in its own types
        raise TrainingError(f"training failed: {exc}") from exc


def _export(result: Any, out: Path, config: TrainConfig, training: dict[str, Any]
            ) -> tuple[ModelCard, str, tuple[dict[str, float], ...]]:
    candidates = list(result.best_checkpoints or [])
    checkpoint, metrics = select_checkpoint(candidates, config=config)
    with checkpoint.as_directory() as folder:
        state = load_state(Path(folder) / STATE_FILE)
    card = export_checkpoint(
        exported_weights(state), out / "model.safetensors", config=config, steps=int(state["step"]),
        losses=metrics, training=training | {"checkpoint": checkpoint.path},
    )
    return card, checkpoint.path, tuple(dict(m) for _, m in candidates)


def export_run(
    out: str | Path, *, config: TrainConfig | str | Path, storage: str | Path | None = None,
    training: dict[str, Any] | None = None,
) -> TrainResult:
    """Re-select and re-export a finished (or stopped) run from its local checkpoints.

    Reads every ``step_*/metrics.json`` under ``storage`` (default ``out/checkpoints``),
    picks one with :func:`select_checkpoint` under ``config`` and writes
    ``out/model.safetensors`` + card, ``selection.json`` and ``losses.png`` as ``train`` does;
    ``training`` (default: the existing card's) is recorded in the card.
    """
    import json

    if not isinstance(config, TrainConfig):
        config = load_train_config(config)
    out = Path(out)
    run = Path(storage or out / "checkpoints") / RUN_NAME
    folders = sorted(run.glob("step_*/metrics.json"))
    candidates = [(str(f.parent), json.loads(f.read_text())) for f in folders]
    folder, metrics = select_checkpoint(candidates, config=config)
    if training is None and (out / "model.json").is_file():
        training = dict(json.loads((out / "model.json").read_text()).get("training", {}))
    state = load_state(Path(folder) / STATE_FILE)
    card = export_checkpoint(exported_weights(state), out / "model.safetensors", config=config,
                             steps=int(state["step"]), losses=metrics,
                             training=dict(training or {}) | {"checkpoint": folder})
    write_json(out / "selection.json", {"select": config.select, "chosen": folder,
                                        "checkpoints": [m for _, m in candidates]})
    curves = plot_losses(out / "losses.csv", out / "losses.png")
    return TrainResult(out / "model.safetensors", card, folder, out / "losses.csv", curves,
                       tuple(m for _, m in candidates))


def train(
    *,
    masks: Sequence[str | Path],
    out: str | Path,
    slides: Sequence[str | Path] = (),
    tiles: Sequence[str | Path] = (),
    config: TrainConfig | str | Path | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    max_steps: int | None = None,
    address: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    command: str = "",
) -> TrainResult:
    """Train S, R, D_S, D_R on Ray Train and export the selected S to ``out/model.safetensors``.

    Parameters
    ----------
    masks : sequence of paths
        Folders or files of instance/binary masks (PNG/TIFF) or PanNuke ``masks.npy``.
    out : path
        Run folder: ``losses.csv`` (every loss term per step), ``losses.png``, the model
        and its card, ``selection.json`` (every checkpoint's mean losses and the choice).
    slides, tiles : sequences of paths
        Slides (any format :func:`nucflow.slide.open_slide` reads) and folders of tiles.
    config : TrainConfig, YAML path or None (paper defaults)
    workers, gpus_per_worker, cpus_per_worker
        Ray Train scaling; CPU workers use ``cpus_per_worker`` threads each, GPU workers
        ``cpus_per_worker - 1`` processes that build batches ahead (:func:`batch_loaders`).
    max_steps : int, optional
        Overrides the configuration's length.
    address : str, optional
        Ray cluster to join (else a local Ray, or the one already initialised).
    resume : bool
        Continue from the latest checkpoint in ``storage``.
    storage : str, optional
        Checkpoint folder or URI (default ``out/checkpoints``).
    command : str
        The command line, recorded in the model card.
    """
    if not isinstance(config, TrainConfig):
        config = load_train_config(config)
    if max_steps is not None:
        config = dataclasses.replace(config, max_steps=max_steps)
    out = Path(out)
    data = _data_lists(slides, tiles, masks, config)
    config = _with_teacher_path(config)
    storage, latest = _storage(out, storage, resume)
    out.mkdir(parents=True, exist_ok=True)
    loop = loop_config(data, config, out, threads=int(cpus_per_worker) if gpus_per_worker == 0 else None,
                       resume_from=latest if resume else None,
                       loaders=batch_loaders(gpus_per_worker, cpus_per_worker))
    cluster = load_cluster_config()
    with ray_session(address, config=cluster) as info:
        if info.nodes > 1 and cluster.check_shared_output:
            # Rank 0 writes losses.csv into ``out`` and workers write checkpoints to storage.
            for where in {str(out.resolve()), storage}:
                if "://" not in where:
                    check_shared_path(where, timeout_s=cluster.shared_check_timeout_s)
        result = _fit(loop, workers=workers, gpus=gpus_per_worker,
                      cpus=cpus_per_worker, storage=storage)
    training = training_record(command, config, workers, data)
    card, chosen, candidates = _export(result, out, config, training)
    write_json(out / "selection.json", {"select": config.select, "chosen": chosen,
                                        "checkpoints": list(candidates)})
    curves = plot_losses(out / "losses.csv", out / "losses.png")
    logger.info("exported %s (model_id %s, step %d)", out / "model.safetensors",
                card.model_id, card.steps)
    return TrainResult(out / "model.safetensors", card, chosen, out / "losses.csv", curves,
                       candidates)
