"""``nucflow ensemble``: one model from several trained ones (seeds), their maps averaged."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["ensemble"]


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="The ensemble: a .safetensors file (its card beside it) or a folder "
                   "(model.safetensors + model.json).")
def ensemble(models: tuple[Path, ...], out: Path) -> None:
    """Write one model whose probability map is the mean of MODELS' maps (.safetensors files or
    run folders: the same configuration trained with different seeds). `segment`, `evaluate` and
    `validate` take it like any model; it costs one network pass per member."""
    from nucflow.errors import NucflowError
    from nucflow.models import ensemble_models

    try:
        card = ensemble_models(models, out)
    except NucflowError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model {out} (id {card.model_id}): an ensemble of {card.members}")
