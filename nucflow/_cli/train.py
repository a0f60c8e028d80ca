"""``nucflow train``: options in, :func:`nucflow.training.train` called, outcome reported."""

from __future__ import annotations

import glob
import shlex
import sys
from pathlib import Path

import click

from nucflow._cli import LocalFolder
from nucflow.errors import NucflowError

__all__ = ["train"]


def _expand(patterns: tuple[str, ...]) -> list[str]:
    """Paths and quoted globs, in order; a glob matching nothing is kept (and then refused)."""
    out: list[str] = []
    for pattern in patterns:
        out += sorted(glob.glob(pattern)) or [pattern]
    return out


@click.command()
@click.option("--slides", multiple=True, help="Slide files or quoted globs (repeatable).")
@click.option("--tiles", multiple=True,
              help="Folders (or files) of IHC tile images (repeatable); DIR@MPP gives their µm/px "
                   "(default: the config's data.tile_mpp).")
@click.option("--masks", multiple=True, required=True,
              help="Folders of instance/binary masks or PanNuke masks.npy (repeatable).")
@click.option("-o", "--out", type=LocalFolder(), required=True,
              help="Run folder: losses.csv, losses.png, model.safetensors + model.json.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Training YAML, or a shipped one by name: cpu, paper (default: paper values).")
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers.")
@click.option("--gpus-per-worker", type=float, default=0.0, show_default=True)
@click.option("--cpus-per-worker", type=float, default=1.0, show_default=True,
              help="CPU slots per worker: torch threads on CPU; with GPUs, all but one build "
                   "batches ahead (give a GPU worker several).")
@click.option("--max-steps", type=int, help="Stop after this many steps (overrides epochs).")
@click.option("--storage", help="Checkpoint folder or URI (default: OUT/checkpoints).")
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster address; default: local Ray.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint.")
@click.option("--skimage-ihc", is_flag=True, default=None,
              help="Add scikit-image's IHC image to the tiles.")
@click.option("--seed", type=int, help="Random seed (overrides the configuration's).")
def train(slides: tuple[str, ...], tiles: tuple[str, ...], masks: tuple[str, ...], out: Path,
          config_path: Path | None, workers: int, gpus_per_worker: float, cpus_per_worker: float,
          max_steps: int | None, storage: str | None, address: str | None, resume: bool,
          skimage_ihc: bool | None, seed: int | None) -> None:
    """Train the segmentator adversarially against unpaired MASKS on Ray Train."""
    from dataclasses import replace

    from nucflow.training import load_train_config
    from nucflow.training import train as run

    try:
        config = load_train_config(config_path)
        if skimage_ihc:
            config = replace(config, data=replace(config.data, skimage_ihc=True))
        if seed is not None:
            config = replace(config, seed=seed)
        result = run(
            slides=_expand(slides), tiles=list(tiles), masks=list(masks), out=out,
            config=config, workers=workers, gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker, max_steps=max_steps, address=address,
            resume=resume, storage=storage, command=shlex.join(["nucflow", *sys.argv[1:]]),
        )
    except NucflowError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"model {result.model_path} (id {result.card.model_id}, step {result.card.steps}); "
               f"losses {result.csv}, curves {result.curves}")
