"""``nucflow export``: a run's nucleus tables in other tools' formats (SpatialData)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["export"]


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--spatialdata", is_flag=True,
              help="Write OUT/<slide>/nuclei.spatialdata.zarr: nuclei as shapes, measurements as an AnnData "
                   'table (needs: pip install "nucflow[spatialdata]").')
def export(out: Path, spatialdata: bool) -> None:
    """Export the nucleus tables of output folder OUT (a finished nucflow segment run)."""
    from nucflow.errors import InputError
    from nucflow.export import export_spatialdata, spatialdata_slides

    if not spatialdata:
        raise click.UsageError("choose a format: --spatialdata")
    try:
        slides = spatialdata_slides(out)
        for slide in slides:
            click.echo(f"{slide.name}: {export_spatialdata(slide)}")
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
