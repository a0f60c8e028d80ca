"""``nucflow validate``: a model and the baselines over every validation set, one table."""

from __future__ import annotations

import os
from pathlib import Path

import click

from nucflow._cli import LocalFolder
from nucflow.errors import NucflowError
from nucflow.methods import METHODS

__all__ = ["validate"]


@click.command()
@click.option("--model", "models", multiple=True, type=click.Path(path_type=Path),
              help="Model to score (repeat, e.g. one per training seed, for mean and spread); "
                   "default: the bundled model.")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS),
              help="Methods to score (default: unet, threshold and deconvolution).")
@click.option("--sets", "manifest", type=click.Path(dir_okay=False, path_type=Path),
              help="Validation manifest (default: the shipped nucflow/configs/validation.yaml).")
@click.option("--set", "only", multiple=True, help="Score only this set of the manifest (repeatable).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("NUCFLOW_DATA", "../shared/data"), show_default="../shared/data",
              help="Data root the manifest's paths are relative to (or NUCFLOW_DATA).")
@click.option("--model-mpp", type=float, help="Run the model(s) at this µm/px instead of their card's.")
@click.option("--stain", "stain_profile",
              help="Stain profile: ki67, her2, or a YAML path (default: the model card's; ki67 for baselines).")
@click.option("-o", "--out", type=LocalFolder(), required=True,
              help="Report folder: validation.csv, validation.json, validation.md.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but the written paths.")
def validate(models: tuple[Path, ...], methods: tuple[str, ...], manifest: Path | None, only: tuple[str, ...],
             data: Path, model_mpp: float | None, stain_profile: str | None, out: Path, quiet: bool) -> None:
    """Score the model(s) and the classical baselines on every validation set (never trained on)."""
    from nucflow.evaluation import load_validation_sets, write_validation
    from nucflow.evaluation import validate as run

    chosen = methods or METHODS
    try:
        sets = load_validation_sets(manifest, data=data, only=only)
        report = run(sets, methods=chosen, models=models, model_mpp=model_mpp, stain_profile=stain_profile,
                     progress=None if quiet else (lambda m: click.echo(f"scoring {m}", err=True)))
        written = write_validation(report, out)
    except NucflowError as exc:
        raise click.ClickException(str(exc)) from exc
    if not quiet:
        click.echo(report.markdown(), nl=False)
    for path in written.values():
        click.echo(f"wrote {path}")
