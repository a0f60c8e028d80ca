"""``nucflow report``: rebuild a run's report.html (and regions.csv) from its output folder."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["report"]


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the page goes (default: OUT/report.html).")
@click.option("--title", default=None, help="The page's title (default: the folder's name).")
def report(out: Path, html_path: Path | None, title: str | None) -> None:
    """Rebuild the cohort report of output folder OUT: the slides of its summary.csv (status and
    error), then every other slide folder holding a summary.json."""
    from nucflow.report import slides_of_folder, write_region_table, write_report

    slides = slides_of_folder(out)
    if not slides:
        raise click.ClickException(f"{out} holds no summary.csv and no <slide>/summary.json: nothing to report")
    path = write_report(html_path or out / "report.html", slides, title=title or f"nucflow: {out.resolve().name}")
    regions = write_region_table(out / "regions.csv", slides)
    click.echo(f"report: {path}" + (f"\nregions: {regions}" if regions else ""))
