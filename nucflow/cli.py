"""The ``nucflow`` command line: click commands that only parse options and call the library.

Each command lives in ``nucflow/_cli/<name>.py`` and is registered on the group below.
"""

from __future__ import annotations

import logging

import click

from nucflow import __version__

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nucflow")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Unsupervised nuclei segmentation of IHC whole-slide images, on Ray, Zarr and Dask."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from nucflow._cli.segment import segment

    main.add_command(segment)
    from nucflow._cli.submit import submit

    main.add_command(submit)
    from nucflow._cli.evaluate import evaluate

    main.add_command(evaluate)
    from nucflow._cli.train import train

    main.add_command(train)
    from nucflow._cli.validate import validate

    main.add_command(validate)
    from nucflow._cli.report import report

    main.add_command(report)
    from nucflow._cli.export import export

    main.add_command(export)
    from nucflow._cli.ensemble import ensemble

    main.add_command(ensemble)


_register()
